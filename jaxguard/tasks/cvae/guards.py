"""The cVAE task's guards: posterior collapse and a volatile validation reconstruction loss.

`ActiveUnitsGuard` (`guard.active_units`) warns when few latent units are active (posterior
collapse) and reports when they recover; `VolatilityGuard` (`guard.volatility`) warns when the
validation reconstruction loss jumps between epochs (seed 002's symptom). Both only warn, run
after every evaluation (`on_evaluation`, which calls their `update(epoch, metrics)`) and keep a
JSON state for `--resume`.
"""

from __future__ import annotations

import math
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


class VolatilityGuard(guards_lib.Guard):
    """Warns when the validation reconstruction loss jumps between epochs (seed 002's symptom).

    The seed's `val_L_rec` went from 2.13 at epoch 5 to 6.55 at epoch 22 with
    `lambda_ext = 10`: the extreme term on a handful of heavy days dominated it.
    The guard compares `rec_loss` with the previous evaluation's and warns when
    the relative change exceeds `warn_change`; the run's report summarizes the
    epoch-to-epoch changes over the whole run.
    """

    name = "volatility"
    # Metrics `update` reads.
    reads = ("rec_loss",)

    def __init__(self, *, warn_change: float):
        self.warn_change = warn_change
        self._previous: tuple[int, float] | None = None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        value = float(metrics["rec_loss"])
        previous, self._previous = self._previous, (epoch, value)
        if previous is None or not math.isfinite(value) or previous[1] == 0:
            return None
        change = (value - previous[1]) / abs(previous[1])
        if abs(change) <= self.warn_change:
            return None
        return guards_lib.GuardEvent(
            self.name,
            "warn",
            f"validation reconstruction loss changed {change:+.0%} from epoch {previous[0]} "
            f"({previous[1]:.4g}) to epoch {epoch} ({value:.4g}); a few heavy days drive the "
            "extreme term (seed 002): oversample them (data.oversample_extremes) or lower "
            "loss.lambda_ext",
            epoch,
        )

    def on_evaluation(self, evaluation: guards_lib.Evaluation) -> guards_lib.GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available: Iterable[str]) -> None:
        guards_lib.require_metrics(self.reads, available)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self._previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._previous = tuple(state["previous"]) if state["previous"] is not None else None


# The `guard.<name>` sections of this task's config, in the order the guards run.
GUARD_NAMES = (ActiveUnitsGuard.name, VolatilityGuard.name)


def make_guards(config: ConfigDict, splits) -> list[guards_lib.Guard]:
    """The guards `guard.active_units` and `guard.volatility` enable (`warn_change` 0: off)."""
    del splits
    active, volatility = config.guard.active_units, config.guard.volatility
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
    if volatility.warn_change > 0:
        found.append(VolatilityGuard(warn_change=volatility.warn_change))
    return found
