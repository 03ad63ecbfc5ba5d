"""The warm-up guard: the best checkpoint comes from a loss-weight warm-up that early stopping
may never let finish."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxguard.guards.base import Evaluation, Guard, GuardEvent, format_figure
from jaxguard.guards.early_stopping import EarlyStopping

# Far enough for any schedule to have reached its final value.
_HORIZON = 10**9


@dataclasses.dataclass(frozen=True)
class Ramp:
    """A loss weight that rises to `final` by the end of epoch `end_epoch`.

    Attributes:
      term: The loss term's name.
      final: The weight once the warm-up is over.
      end_epoch: The first epoch at whose last step the weight has reached `final`.
      at_epoch: `at_epoch(epoch)`: the weight at the last step of `epoch`.
    """

    term: str
    final: float
    end_epoch: int
    at_epoch: Callable[[int], float]


def weight_ramps(weights: Mapping[str, Any], steps_per_epoch: int) -> tuple[Ramp, ...]:
    """The warm-ups among a composite loss's term weights (`CompositeLoss.terms[t].weight`).

    A weight is a warm-up when it is a schedule whose value at step 0 is below its value far
    out (`_HORIZON` steps). Its end is the first step at which it is within 1e-6 (relative) of
    that value, found by bisection (schedules that warm up are non-decreasing).
    """
    ramps = []
    for term, weight in weights.items():
        if not callable(weight):
            continue
        final = float(weight(_HORIZON))
        if not float(weight(0)) < final:
            continue

        def reached(step: int, weight=weight, final=final) -> bool:
            return float(weight(step)) >= final * (1 - 1e-6)

        low, high = 0, _HORIZON
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reached(middle) else (middle, high)
        ramps.append(
            Ramp(
                term=term,
                final=final,
                end_epoch=high // steps_per_epoch,
                at_epoch=lambda epoch, weight=weight: float(
                    weight((epoch + 1) * steps_per_epoch - 1)
                ),
            )
        )
    return tuple(ramps)


class WarmupGuard(Guard):
    """Warns when the best checkpoint so far sits inside a loss-weight warm-up that early
    stopping can end the run before.

    Seed 002 warmed the KL weight over 30 epochs while early stopping (patience 20) ended the
    run at epoch 25; the kept model came from epoch 5, with beta at 0.017 of 0.1, "KL
    regularization essentially disabled". After every evaluation (this guard runs after early
    stopping, so it sees this evaluation's best) and for each warm-up `Ramp`: when the best epoch
    precedes the ramp's end and the epoch at which early stopping's patience runs out without a
    new best, ``best_epoch + patience``, (or the last epoch of the run, if earlier) also
    precedes it, the guard warns once per stretch with the weight at the best epoch and both
    epochs.

    Args:
      ramps: The loss's warm-ups (`weight_ramps`).
      early_stopping: The run's early stopping; the guard reads its best epoch and patience.
      last_epoch: The last epoch of the run's budget (`train.epochs - 1`).
    """

    name = "warmup"

    def __init__(self, ramps: tuple[Ramp, ...], early_stopping: EarlyStopping, last_epoch: int):
        self.ramps = tuple(ramps)
        self.early_stopping = early_stopping
        self.last_epoch = int(last_epoch)
        self._warned = dict.fromkeys((ramp.term for ramp in self.ramps), False)

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        best_epoch = self.early_stopping.best_epoch
        if best_epoch is None:
            return None
        stop_epoch = min(best_epoch + self.early_stopping.patience, self.last_epoch)
        messages = []
        for ramp in self.ramps:
            inside = best_epoch < ramp.end_epoch and stop_epoch < ramp.end_epoch
            if not inside:
                self._warned[ramp.term] = False
                continue
            if self._warned[ramp.term]:
                continue
            self._warned[ramp.term] = True
            weight = ramp.at_epoch(best_epoch)
            messages.append(
                f"the best checkpoint so far (epoch {best_epoch}) has {ramp.term} weight "
                f"{format_figure(weight)}, {weight / ramp.final:.0%} of its final "
                f"{format_figure(ramp.final)}; unless {self.early_stopping.monitor.source} "
                f"improves, the run ends at epoch {stop_epoch}, before the {ramp.term} warm-up "
                f"ends at epoch {ramp.end_epoch}"
            )
        if not messages:
            return None
        return GuardEvent(
            self.name,
            "warn",
            f"warm-up unfinished at epoch {evaluation.epoch}: {'; '.join(messages)}. The kept "
            "model would come from the warm-up (seed 002: beta 0.017 of 0.1): set "
            "guard.early_stopping.start_epoch to the warm-up's end or shorten the warm-up",
            evaluation.epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"warned": dict(self._warned)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._warned = {term: bool(state["warned"].get(term, False)) for term in self._warned}
