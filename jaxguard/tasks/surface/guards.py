"""The surface task's guards: a stuck loss early in training, and a majority-class prediction.

`PlateauGuard` (`guard.plateau`) warns when train and validation loss are both flat early
in training, the seed's "stuck at 0.40 from epoch 0 to 49"; `MajorityClassGuard`
(`guard.majority_class`) warns when the prediction is one class, or carries no information
beyond the prior. Both only warn, run after every evaluation (`on_evaluation`) and keep a
JSON state for `--resume`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxguard import guards as guards_lib
from jaxguard.tasks.surface.splits import foreground_prior


class PlateauGuard(guards_lib.Guard):
    """Warns when train and validation loss both stay flat for `patience` epochs, early on.

    After each evaluation it keeps the longest run of recent epochs over which both losses
    are flat: for each loss, `(max - min) / mean(|loss|) <= tolerance`. When that run
    reaches `patience` epochs and began before epoch `start_within` (a plateau later on is
    convergence, not a stuck start), it warns with the figures, and again every `patience`
    epochs while the run lasts, so the message grows to the seed's "stuck at 0.40 from
    epoch 0 to 49". Non-finite losses end a run (the non-finite guard reports those).

    `on_evaluation` reads the validation `loss` and `train_loss`; `update(epoch, metrics)`
    is the same check called directly.
    """

    name = "plateau"
    # Metrics `update` reads.
    reads = ("train_loss", "loss")

    def __init__(self, *, patience: int, tolerance: float, start_within: int):
        owner = type(self).__name__
        self.patience = guards_lib.check_count(owner, "patience", patience, 2)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"{owner}: `tolerance` must be finite and >= 0, got {tolerance}.")
        self.tolerance = float(tolerance)
        self.start_within = guards_lib.check_count(owner, "start_within", start_within, 1)
        self._start: int | None = None  # first epoch of the current flat run
        self._train: list[float] = []
        self._val: list[float] = []
        self._last_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: ConfigDict) -> PlateauGuard:
        return cls(patience=cfg.patience, tolerance=cfg.tolerance, start_within=cfg.start_within)

    def _spread(self, values: list[float]) -> float:
        scale = float(np.mean(np.abs(values)))
        # A loss flat at exactly 0 has not moved at all.
        return (max(values) - min(values)) / scale if scale > 0 else 0.0

    def _flat(self) -> bool:
        return max(self._spread(self._train), self._spread(self._val)) <= self.tolerance

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        epoch = guards_lib.check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, None
        )
        self._last_epoch = epoch
        train, val = float(metrics["train_loss"]), float(metrics["loss"])
        if not (math.isfinite(train) and math.isfinite(val)):
            self._start, self._train, self._val = None, [], []
            return None
        if self._start is None:
            self._start = epoch
        self._train.append(train)
        self._val.append(val)
        # Drop the oldest epochs until the remaining run is flat again.
        while len(self._train) > 1 and not self._flat():
            self._train.pop(0)
            self._val.pop(0)
            self._start += 1
        length = len(self._train)
        if self._start >= self.start_within or length < self.patience:
            return None
        if (length - self.patience) % self.patience:
            return None
        return guards_lib.GuardEvent(
            self.name,
            "warn",
            f"loss plateau: train loss stuck at {np.mean(self._train):.2f} "
            f"({min(self._train):.3g}-{max(self._train):.3g}) and val loss at "
            f"{np.mean(self._val):.2f} ({min(self._val):.3g}-{max(self._val):.3g}) from epoch "
            f"{self._start} to {epoch} ({length} epochs; spread "
            f"{self._spread(self._train):.1%} and {self._spread(self._val):.1%} of the level, "
            f"tolerance {self.tolerance:.0%}); check the learning rate, the warm-up and the "
            "class balance",
            epoch,
        )

    def on_evaluation(self, evaluation: guards_lib.Evaluation) -> guards_lib.GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available: Iterable[str]) -> None:
        guards_lib.require_metrics(self.reads, available)

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "tolerance": self.tolerance,
            "start": self._start,
            "train": list(self._train),
            "val": list(self._val),
            "last_epoch": self._last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        guards_lib.check_state_matches(
            type(self).__name__, state, patience=self.patience, tolerance=self.tolerance
        )
        self._start = state["start"]
        self._train = list(state["train"])
        self._val = list(state["val"])
        self._last_epoch = state["last_epoch"]


class MajorityClassGuard(guards_lib.Guard):
    """Warns when the validation prediction is one class, or no better than the prior.

    From `start_epoch` on, an evaluation is suspicious when the predicted foreground
    fraction is within `margin` of 0 or 1 (one class everywhere), or within `margin` of the
    training prior while the precision is within `margin` of the true foreground fraction
    (a prediction independent of the labels has exactly that precision: the foreground it
    marks is no purer than a random pick). After `patience` suspicious evaluations in a
    row it warns, then every `patience` evaluations while it lasts; dice is quoted next to
    the dice of predicting all foreground. `on_evaluation` calls `update(epoch, metrics)`
    with the validation metrics.
    """

    name = "majority_class"
    # Metrics `update` reads.
    reads = ("fg_fraction_pred", "fg_fraction_true", "precision", "dice")

    def __init__(self, *, prior: float, margin: float, patience: int, start_epoch: int):
        owner = type(self).__name__
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"{owner}: `prior` must lie in [0, 1], got {prior}.")
        if not 0.0 < margin < 0.5:
            raise ValueError(f"{owner}: `margin` must lie in (0, 0.5), got {margin}.")
        self.prior = float(prior)
        self.margin = float(margin)
        self.patience = guards_lib.check_count(owner, "patience", patience, 1)
        self.start_epoch = guards_lib.check_count(owner, "start_epoch", start_epoch, 0)
        self._count = 0
        self._last_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: ConfigDict, prior: float) -> MajorityClassGuard:
        return cls(
            prior=prior, margin=cfg.margin, patience=cfg.patience, start_epoch=cfg.start_epoch
        )

    def _diagnosis(self, metrics: Mapping[str, float]) -> str | None:
        predicted = float(metrics["fg_fraction_pred"])
        true = float(metrics["fg_fraction_true"])
        precision = float(metrics["precision"])
        if predicted <= self.margin:
            return "predicting (almost) only background"
        if predicted >= 1.0 - self.margin:
            return "predicting (almost) only foreground"
        # NaN precision (nothing predicted) is covered above; here it compares False.
        if abs(predicted - self.prior) <= self.margin and abs(precision - true) <= self.margin:
            return (
                f"predicting foreground at the prior's rate with precision {precision:.3f} "
                f"= the true foreground fraction, i.e. independently of the labels"
            )
        return None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        epoch = guards_lib.check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, None
        )
        self._last_epoch = epoch
        if epoch < self.start_epoch:
            return None
        diagnosis = self._diagnosis(metrics)
        if diagnosis is None:
            self._count = 0
            return None
        self._count += 1
        if self._count < self.patience or (self._count - self.patience) % self.patience:
            return None
        true = float(metrics["fg_fraction_true"])
        return guards_lib.GuardEvent(
            self.name,
            "warn",
            f"majority class: {diagnosis} for {self._count} evaluations (epoch {epoch}): "
            f"predicted foreground fraction {float(metrics['fg_fraction_pred']):.3f} vs true "
            f"{true:.3f} (training prior {self.prior:.3f}); dice {float(metrics['dice']):.3f} "
            f"vs {2 * true / (1 + true):.3f} for predicting all foreground",
            epoch,
        )

    def on_evaluation(self, evaluation: guards_lib.Evaluation) -> guards_lib.GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available: Iterable[str]) -> None:
        guards_lib.require_metrics(self.reads, available)

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior, "count": self._count, "last_epoch": self._last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        guards_lib.check_state_matches(type(self).__name__, state, prior=self.prior)
        self._count = state["count"]


def make_guards(config: ConfigDict, splits) -> list[guards_lib.Guard]:
    """The enabled task guards, in this order: `guard.plateau`, `guard.majority_class`."""
    cfg = config.guard
    guards: list[guards_lib.Guard] = []
    if cfg.plateau.enabled:
        guards.append(PlateauGuard.from_config(cfg.plateau))
    if cfg.majority_class.enabled:
        guards.append(MajorityClassGuard.from_config(cfg.majority_class, foreground_prior(splits)))
    return guards
