"""The volatility guard: a watched validation metric that jumps between evaluations."""

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
    worsening,
)
from jaxguard.guards.monitor import MonitorExpression


class VolatilityGuard(Guard):
    """Warns when a watched validation metric jumps the wrong way from one evaluation to the next.

    Seed 002 stopped early on `val_L_rec`, which swung 3x between epochs because a handful of
    heavy-rain days drove its extreme term: early stopping then follows spikes, not progress.
    For each watched metric ``(name, mode)`` and each evaluation from `start_epoch` on, with
    `previous` the metric at the evaluation before and `best` the best value seen so far:

        jump = worsening(value, previous) / max(|previous|, |best|)

    (``value - previous`` for mode "min", ``previous - value`` for "max"). A jump above
    `max_jump` gives a "warn" event naming the metric, its change and the change of the other
    watched metrics over the same evaluation, so a volatile monitor stands out next to a stable
    quality metric. Scaling by the larger of the previous and the best value keeps a metric that
    crosses zero (R^2) from reading as a huge relative change. Improvements never warn.

    Args:
      metrics: ``(name, mode)`` pairs, a name being a metric or an expression of metrics; the
        harness passes the early-stopping monitor plus `guard.volatility.metrics`.
      max_jump: The relative worsening above which an evaluation warns (1.0: the metric doubled).
      start_epoch: Evaluations before it only record values (the first epochs move a lot).
    """

    name = "volatility"

    def __init__(
        self, metrics: Sequence[tuple[str, str]], max_jump: float = 1.0, start_epoch: int = 1
    ):
        owner = type(self).__name__
        if not metrics:
            raise ValueError(f"{owner}: give at least one (metric, mode) to watch.")
        self.metrics = tuple((str(name), check_mode(owner, "mode", mode)) for name, mode in metrics)
        self._expressions = {name: MonitorExpression(name) for name, _ in self.metrics}
        check_positive(owner, "max_jump", max_jump)
        self.max_jump = float(max_jump)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self._previous: dict[str, float] = {}
        self._best: dict[str, float] = {}
        self._last_epoch: int | None = None

    def _jump(self, name: str, mode: str, value: float) -> float | None:
        previous, best = self._previous.get(name), self._best.get(name)
        if previous is None or best is None or not math.isfinite(value):
            return None
        scale = max(abs(previous), abs(best))
        if scale == 0:
            return None
        return worsening(value, previous, mode) / scale

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Takes one evaluation's metrics; returns a "warn" event or None."""
        jumps = {}
        for name, mode in self.metrics:
            value = self._expressions[name].evaluate(metrics)
            jumps[name] = self._jump(name, mode, value)
            if math.isfinite(value):
                self._previous[name] = value
                best = self._best.get(name)
                if best is None or worsening(value, best, mode) < 0:
                    self._best[name] = value
        self._last_epoch = epoch
        if epoch < self.start_epoch:
            return None
        spikes = [name for name, jump in jumps.items() if jump is not None and jump > self.max_jump]
        if not spikes:
            return None
        first = spikes[0]
        others = [
            f"{name} {jump:+.0%}"
            for name, jump in jumps.items()
            if name != first and jump is not None
        ]
        beside = f" (over the same evaluation: {', '.join(others)})" if others else ""
        return GuardEvent(
            self.name,
            "warn",
            f"volatile {first} at epoch {epoch}: it got {jumps[first]:.0%} worse than at the "
            f"evaluation before (now {format_figure(self._previous[first])}, more than "
            f"{self.max_jump:.0%} of its scale){beside}; early stopping on a spiky metric "
            "follows the spikes: monitor a stable one or steady its cause",
            epoch,
        )

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available) -> None:
        for expression in self._expressions.values():
            expression.validate(available)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metrics": [list(pair) for pair in self.metrics],
            "previous": dict(self._previous),
            "best": dict(self._best),
            "last_epoch": self._last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(
            type(self).__name__,
            {"metrics": [tuple(pair) for pair in state["metrics"]]},
            metrics=list(self.metrics),
        )
        self._previous = dict(state["previous"])
        self._best = dict(state["best"])
        self._last_epoch = state["last_epoch"]
