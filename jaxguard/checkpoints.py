"""Orbax checkpoints of a run: the latest (for --resume) and the best, kept apart.

An orbax `CheckpointManager` given `best_fn` and `max_to_keep` keeps only the
best checkpoints and may delete the most recent one, which --resume needs. So
jaxguard uses two managers under `WORKDIR/checkpoints/`: `latest/` keeps the
last `keep_latest` saves, `best/` keeps one, written only when the early-stopping
monitor improved. The best therefore follows the monitor's mode, and a NaN
metric, which never improves, can never become the best.

A checkpoint holds the arrays (`params`, `model_state`, `opt_state`, `rng`,
`step`) and a JSON `meta` with the host-side state (epoch, guard states, history).
Orbax writes into a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _to_savable(tree: Any) -> Any:
    """Typed PRNG keys become their raw uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(
        lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
        tree,
    )


def _from_savable(tree: Any, like: Any) -> Any:
    """Inverse of `_to_savable`, using `like` to know which leaves were keys."""
    return jax.tree.map(
        lambda a, ref: (
            jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref))
            if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key)
            else a
        ),
        tree,
        like,
    )


class RunCheckpoints:
    """The latest and best checkpoints of one run directory."""

    def __init__(self, workdir: str, *, keep_latest: int):
        options = dict(enable_async_checkpointing=False, create=True)
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, **options),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
        )

    @staticmethod
    def _save(manager: ocp.CheckpointManager, step: int, arrays: Any, meta: dict) -> None:
        manager.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(_to_savable(arrays)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        manager.wait_until_finished()

    def save(self, step: int, arrays: Any, meta: dict, *, is_best: bool) -> None:
        """Saves the latest checkpoint, and the best too when `is_best`."""
        self._save(self.latest, step, arrays, meta)
        if is_best:
            self._save(self.best, step, arrays, meta)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(_to_savable(like)), meta=ocp.args.JsonRestore()
            ),
        )
        return _from_savable(restored["arrays"], like), dict(restored["meta"])

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """`(arrays, meta)` of the most recent save, or None when there is none."""
        return self._restore(self.latest, like)

    def restore_best(self, like: Any) -> tuple[Any, dict] | None:
        """`(arrays, meta)` of the best save, or None when no evaluation ever improved."""
        return self._restore(self.best, like)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
