"""The pointer task's guards, each with its section under `guard`.

* `HeadGradientBand` (`guard.head_gradient_band`): checks the first epoch's gradient norm of
  the x, y and done heads against `band`.
* `DoneNeverPredicted` (`guard.done_never_predicted`): warns when no done validation example
  gets a done probability above 0.5 for `patience` evaluations in a row.
* `LenientThreshold` (`guard.lenient_threshold`): warns when more than `max_share` of the
  validation pointing errors are soft misses (`soft_miss_rate`, see
  `jaxguard/tasks/pointer/metrics.py`) for `patience` evaluations in a row.

Each section has `enabled` (default True).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict

from jaxguard.config import ConfigError
from jaxguard.guards import Evaluation, Guard, GuardEvent, StepInfo, require_metrics
from jaxguard.metrics import DONE_THRESHOLD
from jaxguard.tasks.pointer.metrics import soft_zone_px
from jaxguard.tasks.pointer.model import HEADS


def check_band(band: Any) -> tuple[float, float]:
    """`guard.head_gradient_band.band` as `(low, high)`; a ConfigError unless 0 <= low < high."""
    try:
        low, high = (float(v) for v in band)
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0 <= low < high:
        raise ConfigError(
            f"guard.head_gradient_band.band must be (low, high) with 0 <= low < high, got {band}"
        )
    return low, high


def check_patience(patience: Any) -> int:
    """`guard.done_never_predicted.patience`; a ConfigError unless it is >= 1."""
    if not patience >= 1:
        raise ConfigError(f"guard.done_never_predicted.patience must be >= 1, got {patience}")
    return patience


class HeadGradientBand(Guard):
    """Checks the first epoch's gradient norm of each head against a healthy band.

    `update_step` (every logging step of epoch 0) reads `grad_norm/<head>` from the
    train-step measurements and warns the first time a head leaves `[low, high]`;
    `update` after the first evaluation reports each head's median and range over the
    epoch ("info" when every measurement was inside the band, else "warn"). The band is
    model-specific: the seed's 50-200 was for its own network; measure a healthy run
    of yours and set `guard.head_gradient_band.band` around it.
    """

    name = "head_gradient_band"

    def __init__(self, heads: tuple[str, ...], band: tuple[float, float]):
        self.heads = heads
        self.low, self.high = check_band(band)
        self._norms: dict[str, list[float]] = {h: [] for h in heads}
        self._warned: list[str] = []
        self._reported = False

    def _inside(self, value: float) -> bool:
        return self.low <= value <= self.high

    def on_step(self, info: StepInfo) -> GuardEvent | None:
        return self.update_step(info.step, info.epoch, info.scalars)

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def update_step(self, step: int, epoch: int, scalars: Mapping[str, float]) -> GuardEvent | None:
        """Records the heads' gradient norms of one logging step of epoch 0."""
        if epoch > 0:
            return None
        outside = []
        for name in self.heads:
            value = float(scalars[f"grad_norm/{name}"])
            self._norms[name].append(value)
            if not self._inside(value) and name not in self._warned:
                self._warned.append(name)
                outside.append(f"{name} {value:.3g}")
        if not outside:
            return None
        return GuardEvent(
            self.name,
            "warn",
            f"step {step}: head gradient norm outside the healthy band [{self.low:g}, "
            f"{self.high:g}]: {', '.join(outside)} (far below: the head barely learns; far "
            "above: the loss or the learning rate is too large)",
            step=step,
        )

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """After the first evaluation: each head's median and range over epoch 0."""
        del metrics  # This guard reads the train steps only.
        if epoch > 0 or self._reported or not self._norms[self.heads[0]]:
            return None
        self._reported = True
        parts, outside, measured = [], 0, 0
        for name in self.heads:
            values = self._norms[name]
            measured += len(values)
            outside += sum(not self._inside(v) for v in values)
            parts.append(
                f"{name} median {statistics.median(values):.3g} "
                f"({min(values):.3g}-{max(values):.3g})"
            )
        verdict = "all inside" if outside == 0 else f"{outside} of {measured} outside"
        return GuardEvent(
            self.name,
            "info" if outside == 0 else "warn",
            f"epoch 0 head gradient norms: {'; '.join(parts)}; band [{self.low:g}, "
            f"{self.high:g}]: {verdict}",
            epoch=epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"norms": self._norms, "warned": self._warned, "reported": self._reported}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._norms = {name: list(values) for name, values in state["norms"].items()}
        self._warned = list(state["warned"])
        self._reported = state["reported"]


class StreakGuard(Guard):
    """Counts the evaluations in a row whose validation figures are bad; warns at `patience`.

    A subclass names the `METRICS` it reads and defines `is_bad(metrics)` (True, False, or
    None for "no evidence": the streak is left as it is) and `message(metrics)`. With
    `warn_every` every evaluation from the `patience`-th of a streak on warns; without, only
    that one (a new streak warns again). The streak is saved in each checkpoint.
    """

    METRICS: tuple[str, ...] = ()
    warn_every = True

    def __init__(self, patience: int):
        self.patience = check_patience(patience)
        self._streak = 0

    def is_bad(self, metrics: Mapping[str, float]) -> bool | None:
        raise NotImplementedError

    def message(self, metrics: Mapping[str, float]) -> str:
        raise NotImplementedError

    def check_metrics(self, available: Iterable[str]) -> None:
        require_metrics(self.METRICS, available)

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Counts the evaluation into the streak; returns the warning when one is due."""
        bad = self.is_bad(metrics)
        if bad is None:
            return None
        self._streak = self._streak + 1 if bad else 0
        if self._streak < self.patience or (self._streak > self.patience and not self.warn_every):
            return None
        return GuardEvent(self.name, "warn", self.message(metrics), epoch=epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "streak": self._streak}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._streak = state["streak"]


class DoneNeverPredicted(StreakGuard):
    """Warns when no done validation example gets a done probability above 0.5.

    After each evaluation: if the validation split has done examples and the highest
    done probability among them (`done_prob_max_positive`) is at most 0.5, the streak
    grows, else it restarts. From `patience` evaluations in a row on, every evaluation
    warns with the figures (the seed's model sat at done probabilities of 0.00-0.57
    for a whole run). Evaluations without done examples leave the streak unchanged.
    """

    name = "done_never_predicted"
    METRICS = (
        "done_prob_max_positive",
        "done_true_rate",
        "count",
        "done_prob_mean",
        "done_prob_std",
    )

    def is_bad(self, metrics: Mapping[str, float]) -> bool | None:
        highest = metrics["done_prob_max_positive"]
        return None if math.isnan(highest) else highest <= DONE_THRESHOLD

    def message(self, metrics: Mapping[str, float]) -> str:
        positives = round(metrics["done_true_rate"] * metrics["count"])
        return (
            f"done never predicted: for {self._streak} evaluations in a row none of the "
            f"{positives} done validation examples got a done probability above "
            f"{DONE_THRESHOLD} (highest {metrics['done_prob_max_positive']:.3f}; all examples: "
            f"mean {metrics['done_prob_mean']:.3f}, std {metrics['done_prob_std']:.3f}); raise "
            "loss.pos_weight or loss.done_weight, or check the done labels"
        )


def check_share(share: Any) -> float:
    """`guard.lenient_threshold.max_share` as a float in (0, 1); a ConfigError otherwise."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
        raise ConfigError(f"guard.lenient_threshold.max_share must be in (0, 1), got {share!r}")
    return float(share)


def check_miss_px(miss_px: Any) -> None:
    """`guard.lenient_threshold.miss_px`: None or a positive number of pixels."""
    if miss_px is None:
        return
    if isinstance(miss_px, bool) or not isinstance(miss_px, int | float) or not miss_px > 0:
        raise ConfigError(
            f"guard.lenient_threshold.miss_px must be None (two object radii) or a positive "
            f"number of pixels, got {miss_px!r}"
        )


class LenientThreshold(StreakGuard):
    """Warns when the spatial loss treats misses as close: a distance threshold too lenient.

    After each evaluation: if more than `max_share` of the validation pointing errors are
    soft misses (`soft_miss_rate`: the error exceeds `miss_px`, so the prediction is off the
    object, but stays under the loss threshold, inside the quadratic zone whose gradient
    shrinks with the error), the streak grows, else it restarts. At `patience` evaluations in
    a row it warns once, with the figures; only a new streak warns again. Seed 004: threshold
    0.3 (57 px) "treats a 20 px error as close enough"; errors stuck at 7-30 px until it was cut
    to 0.1.
    Under an ambiguous target (two candidate objects) the quadratic zone's minimiser is
    their average, off both objects, so the share stays high while val loss keeps falling.
    """

    name = "lenient_threshold"
    METRICS = ("soft_miss_rate", "pixel_error_median", "pixel_error_count")
    warn_every = False

    def __init__(self, max_share: float, patience: int, soft_zone_px: tuple[float, float]):
        super().__init__(patience)
        self.max_share = check_share(max_share)
        self.soft_zone_px = soft_zone_px

    def is_bad(self, metrics: Mapping[str, float]) -> bool | None:
        share = metrics["soft_miss_rate"]
        return None if math.isnan(share) else share > self.max_share

    def message(self, metrics: Mapping[str, float]) -> str:
        miss_px, threshold_px = self.soft_zone_px
        return (
            f"distance threshold too lenient: for {self.patience} evaluations in a row "
            f"{metrics['soft_miss_rate']:.0%} of the validation pointing errors (limit "
            f"{self.max_share:.0%}) missed the object (> {miss_px:.0f} px) but stayed inside "
            f"the loss's quadratic zone (< {threshold_px:.0f} px), where the gradient fades "
            f"with the error (median error {metrics['pixel_error_median']:.1f} px); lower "
            f"loss.threshold toward {miss_px:.0f} px"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "max_share": self.max_share}


def make_guards(config: ConfigDict, splits) -> list[Guard]:
    """The enabled guards of `guard.head_gradient_band`, `guard.done_never_predicted` and
    `guard.lenient_threshold`."""
    del splits  # The guards read metrics and train-step measurements only.
    band, done = config.guard.head_gradient_band, config.guard.done_never_predicted
    lenient = config.guard.lenient_threshold
    guards: list[Guard] = []
    if band.enabled:
        guards.append(HeadGradientBand(HEADS, tuple(band.band)))
    if done.enabled:
        guards.append(DoneNeverPredicted(done.patience))
    if lenient.enabled:
        zone = soft_zone_px(config)
        guards.append(LenientThreshold(lenient.max_share, lenient.patience, zone))
    return guards
