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
mid-save leaves the previous checkpoints intact. The harness saves `latest/` before
`best/`; a crash between the two leaves a `latest/` whose meta names a best that
`best/` lacks, which `jaxguard.trainer` re-saves from `latest/` on resume.

A step that fails to restore (files truncated or deleted, meta that is not JSON or that
`check` rejects) is set aside as `<step>.corrupt` (renamed, never deleted; orbax ignores
the name) when an older one restores; when none does, nothing is renamed and a
`CheckpointError` says so in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxguard.distributed import barrier, is_writer

# `check(step, arrays, meta)` raises ValueError when a restored checkpoint is inconsistent.
Check = Callable[[int, Any, dict], None]


class CheckpointError(Exception):
    """No checkpoint of a run restores; its str() is one line naming the folder and cause."""


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


def committed_steps(folder: str) -> list[int]:
    """Steps orbax committed in `folder` (`latest/` or `best/`), newest first; [] if none.

    Read from the folder names, without opening a manager: temporary folders of an
    unfinished save and set-aside `<step>.corrupt` folders are not steps.
    """
    if not os.path.isdir(folder):
        return []
    return sorted((int(name) for name in os.listdir(folder) if name.isdigit()), reverse=True)


def describe_error(error: BaseException) -> str:
    """`Type: message` on one line, the message cut to 200 characters."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class RunCheckpoints:
    """The latest and best checkpoints of one run directory."""

    def __init__(self, workdir: str, *, keep_latest: int):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.latest_dir = os.path.join(root, "latest")
        self.best_dir = os.path.join(root, "best")
        self._keep_latest = keep_latest
        self.latest = self._manager(self.latest_dir, keep_latest)
        self.best = self._manager(self.best_dir, 1)

    @staticmethod
    def _manager(folder: str, keep: int) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True
        )
        return ocp.CheckpointManager(folder, options=options)

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

    def save_latest(self, step: int, arrays: Any, meta: dict) -> None:
        """Commits `step` to `latest/` (dropping saves beyond `keep_latest`)."""
        self._save(self.latest, step, arrays, meta)

    def save_best(self, step: int, arrays: Any, meta: dict) -> None:
        """Commits `step` to `best/`, replacing the previous best."""
        self._save(self.best, step, arrays, meta)

    @staticmethod
    def _restore_step(manager: ocp.CheckpointManager, step: int, like: Any) -> tuple[Any, dict]:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(_to_savable(like)), meta=ocp.args.JsonRestore()
            ),
        )
        meta = restored["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"meta is {type(meta).__name__}, not a JSON object")
        return _from_savable(restored["arrays"], like), dict(meta)

    def restore_latest(
        self, like: Any, *, check: Check | None = None, warn: Callable[[str], None] = print
    ) -> tuple[Any, dict] | None:
        """`(arrays, meta)` of the newest save that restores and passes `check`; None if none.

        Newer saves that fail are set aside as `<step>.corrupt`, each with a `warn` line.

        Raises:
          CheckpointError: there are saves, and none restores (nothing is renamed then:
            a config that changed the arrays' shapes fails on every save alike).
        """
        failures = []
        for step in committed_steps(self.latest_dir):
            try:
                arrays, meta = self._restore_step(self.latest, step, like)
                if check is not None:
                    check(step, arrays, meta)
            except Exception as error:  # Orbax, tensorstore and JSON fail in many types.
                failures.append((step, error))
                continue
            for bad_step, error in failures:
                moved = self.set_aside(self.latest_dir, bad_step)
                warn(
                    f"warning: checkpoint {self.latest_dir}/{bad_step} does not restore "
                    f"({describe_error(error)}); set aside as {moved}, resuming from step {step}"
                )
            return arrays, meta
        if failures:
            step, error = failures[0]
            raise CheckpointError(
                f"no checkpoint in {self.latest_dir} restores (newest, step {step}: "
                f"{describe_error(error)}); start over with another --workdir, or move "
                f"{os.path.dirname(self.latest_dir)} away"
            )
        return None

    def restore_best(self, like: Any) -> tuple[Any, dict] | None:
        """`(arrays, meta)` of the best save, or None when no evaluation ever improved.

        Raises what orbax raises when the save does not restore.
        """
        steps = committed_steps(self.best_dir)
        return self._restore_step(self.best, steps[0], like) if steps else None

    def restore_latest_step(self, step: int, like: Any) -> tuple[Any, dict]:
        """`(arrays, meta)` of one save in `latest/`."""
        return self._restore_step(self.latest, step, like)

    def set_aside(self, folder: str, step: int, suffix: str = "corrupt") -> str:
        """Renames `folder/<step>` to `folder/<step>.<suffix>[.<n>]`; returns the new path.

        With several processes, every process calls it and process 0 renames.
        """
        target = os.path.join(folder, f"{step}.{suffix}")
        count = 0
        while os.path.exists(target):
            count += 1
            target = os.path.join(folder, f"{step}.{suffix}.{count}")
        barrier(f"every process has chosen {target}")
        if is_writer():
            os.rename(os.path.join(folder, str(step)), target)
        barrier(f"renamed {target}")
        self.reload()
        return target

    def reload(self) -> None:
        """Reopens the managers so that they see the folders as they are on disk now."""
        self.close()
        self.latest = self._manager(self.latest_dir, self._keep_latest)
        self.best = self._manager(self.best_dir, 1)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
