"""The cVAE task's own guard: posterior collapse.

`ActiveUnitsGuard` (`guard.active_units`) warns when few latent units are active (posterior
collapse) and reports when they recover. It only warns, runs after every evaluation
(`on_evaluation`, which calls its `update(epoch, metrics)`) and keeps a JSON state for
`--resume`. The volatility of the reconstruction loss (seed 002) is watched by the shared
`guard.volatility` (`jaxguard.guards.VolatilityGuard`), which the cvae config points at it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict

from jaxguard import guards as guards_lib


class ActiveUnitsGuard(guards_lib.Guard):
    """Warns when fewer than `min_fraction * d_z` latent units are active (posterior collapse).

    A collapsed unit's posterior equals its prior for every sample: the decoder
    ignores it and the KL there is ~0. The guard reads `active_units` from the
    validation metrics; it warns when the count drops below the bound and reports
    (info) when it recovers. `activity_threshold` is the variance above which the
    metrics count a unit as active (quoted in the message).

    What it measures: whether the *encoder* uses z (the posterior means vary across days).
    What it does not: whether the *decoder* responds to z. A model can have every unit
    active while its ensemble members are near-identical (`:mean_only`: 16 of 16 active,
    spread/skill 0.09); `guard.ensemble_spread` (`jaxguard.guards.EnsembleSpreadGuard`)
    watches that.
    """

    name = "active_units"
    # Metrics `update` reads.
    reads = ("active_units", "kl")

    def __init__(
        self, *, d_z: int, min_fraction: float, activity_threshold: float, start_epoch: int
    ):
        self.d_z = d_z
        self.min_fraction = min_fraction
        self.activity_threshold = activity_threshold
        self.start_epoch = start_epoch
        self._collapsed = False

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        if epoch < self.start_epoch:
            return None
        active = int(metrics["active_units"])
        bound = self.min_fraction * self.d_z
        if active < bound and not self._collapsed:
            self._collapsed = True
            return guards_lib.GuardEvent(
                self.name,
                "warn",
                f"posterior collapse at epoch {epoch}: {active} of {self.d_z} latent units "
                f"active (posterior-mean variance > {self.activity_threshold:g}), below "
                f"{self.min_fraction:.0%} of them; KL {metrics['kl']:.4g} nats. The decoder is "
                "ignoring z: lower loss.beta or lengthen loss.beta_warmup_epochs",
                epoch,
            )
        if active >= bound and self._collapsed:
            self._collapsed = False
            return guards_lib.GuardEvent(
                self.name,
                "info",
                f"latent units active again at epoch {epoch}: {active} of {self.d_z}",
                epoch,
            )
        return None

    def on_evaluation(self, evaluation: guards_lib.Evaluation) -> guards_lib.GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available: Iterable[str]) -> None:
        guards_lib.require_metrics(self.reads, available)

    def state_dict(self) -> dict[str, Any]:
        return {"collapsed": self._collapsed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._collapsed = bool(state["collapsed"])


# The `guard.<name>` sections of this task's config, in the order the guards run.
GUARD_NAMES = (ActiveUnitsGuard.name,)


def make_guards(config: ConfigDict, splits) -> list[guards_lib.Guard]:
    """The guard `guard.active_units` enables."""
    del splits
    active = config.guard.active_units
    found: list[guards_lib.Guard] = []
    if active.enabled:
        found.append(
            ActiveUnitsGuard(
                d_z=config.model.d_z,
                min_fraction=active.min_active_fraction,
                activity_threshold=active.activity_threshold,
                start_epoch=active.start_epoch,
            )
        )
    return found
