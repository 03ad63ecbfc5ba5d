"""The guard that stops a run whose train step keeps skipping non-finite updates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxguard.guards.base import (
    Guard,
    GuardEvent,
    StepInfo,
    check_advance,
    check_count,
    check_state_matches,
)


class NonFiniteGuard(Guard):
    """Stops a run whose train step keeps skipping non-finite updates.

    The train step skips updates with a NaN or infinite loss or gradient
    (`optax.apply_if_finite` counts them); at every logging step the loop passes those
    counters and the latest logged terms. Events:

    * "warn" when the total has grown and the new skips do not all extend a streak already
      reported (a new skip streak): at most one per logging step, none while a reported streak
      keeps growing.
    * "stop" when ``consecutive_nonfinite >= max_consecutive``, naming the step and the terms
      whose logged value is NaN or infinite.

    Only what the counters show at logging steps is seen: a streak that reaches
    `max_consecutive` and ends between two logging steps is reported as a new streak (warn),
    not as a stop. Set apply_if_finite's `max_consecutive_errors` above `max_consecutive` or log
    every step where that matters.
    """

    name = "nonfinite"

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = check_count(
            type(self).__name__, "max_consecutive", max_consecutive, 1
        )
        self._last_step: int | None = None
        self._last_consecutive = 0
        self._last_total = 0
        self._stopped_step: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> NonFiniteGuard:
        """From `config.guard.nonfinite`."""
        return cls(max_consecutive=cfg.max_consecutive)

    @property
    def should_stop(self) -> bool:
        return self._stopped_step is not None

    def update(
        self,
        step: int,
        consecutive_nonfinite: int,
        total_nonfinite: int,
        terms: Mapping[str, float],
    ) -> GuardEvent | None:
        """Takes the skip counters at one logging step; returns a "warn" or "stop" event, or None.

        Args:
          step: The training step; must increase from call to call.
          consecutive_nonfinite: Updates skipped in a row up to this step (0 after a good one).
          total_nonfinite: Updates skipped since the start of the run; never decreases.
          terms: The latest logged loss terms and norms, e.g. ``{"loss/kl": nan,
            "grad_norm": inf}``; those that are NaN or infinite are named in the messages.
        """
        owner = type(self).__name__
        step = check_advance(owner, "step", step, self._last_step, self._stopped_step)
        consecutive = check_count(owner, "consecutive_nonfinite", consecutive_nonfinite, 0)
        total = check_count(owner, "total_nonfinite", total_nonfinite, 0)
        if consecutive > total or total < self._last_total:
            raise ValueError(
                f"{owner}: inconsistent counters at step {step}: consecutive_nonfinite "
                f"{consecutive}, total_nonfinite {total} (was {self._last_total}); the total "
                f"must not decrease nor be below the consecutive count."
            )
        new_skips = total - self._last_total
        # Why: the skips since the last call all extend the reported streak only if the run of
        # consecutive skips grew by exactly that many; anything else means a new streak began.
        same_streak = (
            self._last_consecutive > 0 and consecutive - self._last_consecutive == new_skips
        )
        self._last_step, self._last_consecutive, self._last_total = step, consecutive, total
        bad_terms = [key for key, value in terms.items() if not math.isfinite(float(value))]
        terms_text = ", ".join(bad_terms) or "none of the logged values"
        if consecutive >= self.max_consecutive:
            self._stopped_step = step
            return GuardEvent(
                "nonfinite",
                "stop",
                f"non-finite loss: {consecutive} updates in a row skipped up to step {step} "
                f"({total} in total); non-finite terms: {terms_text}",
                step=step,
            )
        if new_skips > 0 and not same_streak:
            return GuardEvent(
                "nonfinite",
                "warn",
                f"non-finite updates skipped up to step {step}: {new_skips} new, {consecutive} in "
                f"a row, {total} in total (stop at {self.max_consecutive} in a row); "
                f"non-finite terms: {terms_text}",
                step=step,
            )
        return None

    def on_step(self, info: StepInfo) -> GuardEvent | None:
        """`update` with the skip counters of the train step's measurements."""
        return self.update(
            info.step,
            int(info.scalars["nonfinite/consecutive"]),
            int(info.scalars["nonfinite/total"]),
            info.scalars,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_consecutive": self.max_consecutive,
            "last_step": self._last_step,
            "last_consecutive": self._last_consecutive,
            "last_total": self._last_total,
            "stopped_step": self._stopped_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, max_consecutive=self.max_consecutive)
        self._last_step = state["last_step"]
        self._last_consecutive = state["last_consecutive"]
        self._last_total = state["last_total"]
        self._stopped_step = state["stopped_step"]
