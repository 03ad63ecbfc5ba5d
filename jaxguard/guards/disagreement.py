"""The disagreement guard: the monitored metric improves while a quality metric gets worse."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxguard._checks import check_positive
from jaxguard.guards.base import (
    Evaluation,
    Guard,
    GuardEvent,
    check_count,
    check_mode,
    check_state_matches,
    format_figure,
    require_metrics,
    worsening,
)
from jaxguard.guards.monitor import MonitorExpression


class DisagreementGuard(Guard):
    """Warns when the monitor keeps setting new bests while a quality metric falls behind its own.

    The common shape of seeds 000, 002 and 004: val loss improved while R^2 fell (a collapsing
    regressor), the field MAE improved while the tail MAE got worse, val loss fell while the
    pixel error grew. Early stopping and the best checkpoint follow the monitor, so the run
    keeps the worse model. For each quality metric ``(name, mode)``, from `start_epoch` on:

    * the quality metric's best so far is kept;
    * an evaluation at which the monitor sets a new best (by more than `min_delta`) while the
      quality metric is worse than its best by more than ``tolerance * |best|`` counts one;
    * an evaluation at which the quality metric is within that tolerance of its best resets the
      count; other evaluations leave it.

    When the count reaches `patience`, a "warn" event (once per stretch) names both metrics,
    their figures and the epoch of the quality metric's best checkpoint.

    Args:
      monitor: The monitored metric or expression (the harness passes early stopping's).
      mode: "min" or "max", the monitor's direction.
      quality: ``(name, mode)`` pairs of the metrics the run is for; one equal to the monitor
        is skipped.
      tolerance: Relative slack on the quality metric's best.
      patience: Counted evaluations before the warning.
      min_delta: The monitor's improvement threshold (early stopping's).
      start_epoch: Earlier evaluations are ignored.
    """

    name = "disagreement"

    def __init__(
        self,
        monitor: str,
        mode: str,
        quality: Sequence[tuple[str, str]],
        *,
        tolerance: float = 0.05,
        patience: int = 3,
        min_delta: float = 0.0,
        start_epoch: int = 0,
    ):
        owner = type(self).__name__
        self.monitor = MonitorExpression(monitor)
        self.mode = check_mode(owner, "mode", mode)
        self.quality = tuple(
            (name, check_mode(owner, f"quality {name}", quality_mode))
            for name, quality_mode in quality
            if name != self.monitor.source
        )
        if not self.quality:
            raise ValueError(f"{owner}: `quality` names no metric other than the monitor.")
        check_positive(owner, "tolerance", tolerance, allow_zero=True)
        check_positive(owner, "min_delta", min_delta, allow_zero=True)
        self.tolerance = float(tolerance)
        self.min_delta = float(min_delta)
        self.patience = check_count(owner, "patience", patience, 1)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self._monitor_best: tuple[int, float] | None = None
        self._quality_best: dict[str, tuple[int, float]] = {}
        self._count: dict[str, int] = {name: 0 for name, _ in self.quality}
        self._warned: dict[str, bool] = {name: False for name, _ in self.quality}

    def _monitor_improves(self, epoch: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        best = self._monitor_best
        if best is None or worsening(value, best[1], self.mode) < -self.min_delta:
            self._monitor_best = (epoch, value)
            return True
        return False

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Takes one evaluation's metrics; returns a "warn" event or None."""
        if epoch < self.start_epoch:
            return None
        monitor_value = self.monitor.evaluate(metrics)
        improved = self._monitor_improves(epoch, monitor_value)
        messages = []
        for name, mode in self.quality:
            value = float(metrics[name])
            best = self._quality_best.get(name)
            if math.isfinite(value) and (best is None or worsening(value, best[1], mode) < 0):
                self._quality_best[name] = best = (epoch, value)
            if best is None:
                continue
            # A NaN gap is not within: a quality metric that stopped being finite is no better.
            within = worsening(value, best[1], mode) <= self.tolerance * abs(best[1])
            if within:
                self._count[name] = 0
                self._warned[name] = False
            elif improved:
                self._count[name] += 1
            if self._count[name] >= self.patience and not self._warned[name]:
                self._warned[name] = True
                messages.append(
                    f"{self.monitor.source} set a new best ({format_figure(monitor_value)}) "
                    f"{self._count[name]} times while {name} stayed worse than its best "
                    f"{format_figure(best[1])} (epoch {best[0]}), now {format_figure(value)}"
                )
        if not messages:
            return None
        return GuardEvent(
            self.name,
            "warn",
            f"monitor and quality disagree at epoch {epoch}: {'; '.join(messages)}. Early "
            "stopping and the best checkpoint follow the monitor, so the run keeps the worse "
            "model: monitor the quality metric (or an expression of both)",
            epoch,
        )

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available) -> None:
        self.monitor.validate(available)
        require_metrics([name for name, _ in self.quality], available)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.source,
            "quality": [list(pair) for pair in self.quality],
            "monitor_best": None if self._monitor_best is None else list(self._monitor_best),
            "quality_best": {name: list(best) for name, best in self._quality_best.items()},
            "count": dict(self._count),
            "warned": dict(self._warned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(
            type(self).__name__,
            {"monitor": state["monitor"], "quality": [tuple(p) for p in state["quality"]]},
            monitor=self.monitor.source,
            quality=list(self.quality),
        )
        best = state["monitor_best"]
        self._monitor_best = None if best is None else (int(best[0]), float(best[1]))
        self._quality_best = {
            name: (int(epoch), float(value))
            for name, (epoch, value) in state["quality_best"].items()
        }
        self._count = dict(state["count"])
        self._warned = dict(state["warned"])
