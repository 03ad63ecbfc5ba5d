"""The overfitting guard: validation loss climbs away from its best while training loss falls."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxguard._checks import check_positive
from jaxguard.guards.base import (
    Evaluation,
    Guard,
    GuardEvent,
    check_count,
    check_state_matches,
    format_figure,
    require_metrics,
)


class OverfittingGuard(Guard):
    """Warns when a validation loss stays well above its best while the training loss keeps falling.

    Seed 004 trained 45 epochs past its best (val loss 0.606 at epoch 10, 1.509 at epoch 55,
    train loss 0.10) with nothing to say so. From `start_epoch` on, with `best` the lowest
    validation `metric` so far, `train_at_best` the training loss of that evaluation and
    `lowest_train` the lowest training loss since then (that evaluation included), an
    evaluation counts when

        metric > best + rise * |best|   and   lowest_train < (1 - train_drop) * train_at_best;

    any other evaluation resets the count. At `patience` counted evaluations in a row the guard
    warns once (per stretch), with the figures and the best epoch, whose checkpoint is the one
    to keep. Lower is better for `metric` (a loss).

    Args:
      metric: The validation loss watched (unprefixed name), "loss" by default.
      rise: Relative margin above the best.
      train_drop: How far (relative) the training loss must have fallen below its value at the
        best evaluation, at some evaluation since: a training loss that only wobbles is noise,
        not memorisation. The lowest since, not the current one: an epoch's training loss
        swings with the few rare examples it holds (the pointer's done term at 3% positives
        and pos_weight 32 moves it 2x between epochs) while the model goes on memorising.
      patience: Counted evaluations in a row before the warning.
      start_epoch: Earlier evaluations are ignored (no best is recorded from them).
    """

    name = "overfitting"

    def __init__(
        self,
        metric: str = "loss",
        rise: float = 0.2,
        patience: int = 2,
        start_epoch: int = 1,
        train_drop: float = 0.05,
    ):
        owner = type(self).__name__
        self.metric = str(metric)
        check_positive(owner, "rise", rise)
        self.rise = float(rise)
        if not 0 <= train_drop < 1:
            raise ValueError(f"{owner}: `train_drop` must be in [0, 1), got {train_drop}.")
        self.train_drop = float(train_drop)
        self.patience = check_count(owner, "patience", patience, 1)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self._best: tuple[int, float, float] | None = None  # (epoch, metric, train_loss)
        self._lowest_train = math.inf  # Since the best evaluation.
        self._count = 0
        self._warned = False

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Takes one evaluation's metrics (with `train_loss`); returns a "warn" event or None."""
        if epoch < self.start_epoch:
            return None
        value, train = float(metrics[self.metric]), float(metrics["train_loss"])
        if not (math.isfinite(value) and math.isfinite(train)):
            return None
        if self._best is None or value < self._best[1]:
            self._best, self._lowest_train = (epoch, value, train), train
        self._lowest_train = min(self._lowest_train, train)
        best_epoch, best, train_at_best = self._best
        fallen = self._lowest_train < (1 - self.train_drop) * train_at_best
        if value > best + self.rise * abs(best) and fallen:
            self._count += 1
        else:
            self._count, self._warned = 0, False
        if self._count < self.patience or self._warned:
            return None
        self._warned = True
        return GuardEvent(
            self.name,
            "warn",
            f"overfitting at epoch {epoch}: val {self.metric} {format_figure(value)} has stayed "
            f"more than {self.rise:.0%} above its best {format_figure(best)} (epoch {best_epoch}) "
            f"for {self._count} evaluations while the training loss fell from "
            f"{format_figure(train_at_best)} to {format_figure(self._lowest_train)} (now "
            f"{format_figure(train)}); the epoch {best_epoch} "
            "checkpoint is the one to keep: stop there (early stopping), add data or "
            "augmentation, or shrink the model",
            epoch,
        )

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available) -> None:
        require_metrics([self.metric, "train_loss"], available)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best": None if self._best is None else list(self._best),
            "lowest_train": self._lowest_train,
            "count": self._count,
            "warned": self._warned,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, metric=self.metric)
        best = state["best"]
        self._best = None if best is None else (int(best[0]), float(best[1]), float(best[2]))
        # A checkpoint from before `lowest_train` existed: the training loss at its best.
        self._lowest_train = float(state.get("lowest_train", math.inf if best is None else best[2]))
        self._count = int(state["count"])
        self._warned = bool(state["warned"])
