"""Which epoch's checkpoint is the best one: a component of its own, with its own monitor."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from jaxguard._checks import check_positive
from jaxguard.guards.base import MODES, check_count, check_state_matches
from jaxguard.guards.monitor import MonitorExpression


class BestCheckpoint:
    """Picks the best evaluation by a monitored value (Lightning's `ModelCheckpoint` role).

    Call `update(epoch, metrics)` after every evaluation; it returns True when that evaluation
    is the best so far, and the harness then saves it as `checkpoints/best`. An evaluation is
    the best when ``epoch >= start_epoch``, its value is finite, and it is the first such value
    or beats the best by more than `min_delta` (``value < best - min_delta`` in mode "min",
    ``value > best + min_delta`` in mode "max"): the rule `EarlyStopping` uses for an
    improvement, so with the same settings the best checkpoint is the early-stopping best.

    `from_config` follows `guard.early_stopping` (monitor, mode, min_delta, start_epoch) unless
    `guard.best.monitor` names a monitor of its own.
    """

    def __init__(
        self, monitor: str, mode: str = "min", *, min_delta: float = 0.0, start_epoch: int = 0
    ):
        owner = type(self).__name__
        self.monitor = MonitorExpression(monitor)
        if mode not in MODES:
            raise ValueError(f"{owner}: `mode` must be 'min' or 'max', got {mode!r}.")
        self.mode = mode
        check_positive(owner, "min_delta", min_delta, allow_zero=True)
        self.min_delta = float(min_delta)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    @classmethod
    def from_config(cls, guard: Any) -> BestCheckpoint | None:
        """From `config.guard`; None when there is no best checkpoint to keep.

        With `guard.best.monitor` unset the selection follows early stopping, and there is none
        when early stopping is off (the run then ends with its last weights, as it trained).
        """
        best, stop = guard.best, guard.early_stopping
        if not best.enabled:
            return None
        if best.monitor is None:
            if not stop.enabled:
                return None
            return cls(
                stop.monitor, stop.mode, min_delta=stop.min_delta, start_epoch=stop.start_epoch
            )
        return cls(best.monitor, best.mode, start_epoch=best.start_epoch)

    def check_metrics(self, available: Iterable[str]) -> None:
        self.monitor.validate(available)

    def update(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Whether the evaluation of `epoch` (its validation `metrics`) is the best so far."""
        value = self.monitor.evaluate(metrics)
        if epoch < self.start_epoch or not math.isfinite(value):
            return False
        better = (
            self.best_value is None
            or (self.mode == "min" and value < self.best_value - self.min_delta)
            or (self.mode == "max" and value > self.best_value + self.min_delta)
        )
        if better:
            self.best_value, self.best_epoch = value, epoch
        return better

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.source,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, monitor=self.monitor.source, mode=self.mode)
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
