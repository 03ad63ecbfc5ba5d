"""The loss-term guard: each term of the composite loss pulls with the weight it was given."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from jaxguard._checks import check_positive
from jaxguard.guards.base import (
    Diagnostics,
    Guard,
    GuardEvent,
    StepInfo,
    check_count,
    format_figure,
)


class LossTermGuard(Guard):
    """Warns when a loss term's effective weight departs from its configured one, or when its
    share of the gradient stays below a floor while its data are in the batch.

    Two measurements of the composite loss (`jaxguard.losses.compose`):

    * Effective weight, at every logging step, for each term declared with a `reference` (the
      plain value it is meant to weigh): ``weighted / reference`` against the term's configured
      weight at that step. Seed 002's bug multiplied the extreme MAE by the share of samples
      holding extremes, so its effective weight was ``lambda_ext * share``, a fifth of the
      configured one, and nothing in the loss curve showed it. A step counts when
      ``|effective / configured - 1| > weight_tolerance``; a step where the reference is 0 (no
      data for the term in the batch) leaves the count; any other resets it.
    * Gradient share, on the diagnostics cadence, for each term given a floor in `min_share`:
      the norm of the term's weighted gradient over the sum of every term's norm, on one
      training batch. A check counts when the share is below its floor while the term's raw
      value is non-zero.

    At `patience` counted steps (or checks) in a row the guard warns once per stretch.

    Args:
      terms: The composite loss's term names.
      weight_tolerance: Relative departure of the effective weight that counts.
      min_share: Term name -> lowest acceptable share of the gradient (0-1).
      patience: Counted steps (checks) in a row before the warning.
    """

    name = "loss_terms"

    def __init__(
        self,
        terms: Iterable[str],
        *,
        weight_tolerance: float = 0.5,
        min_share: Mapping[str, float] | None = None,
        patience: int = 3,
    ):
        owner = type(self).__name__
        self.terms = tuple(terms)
        check_positive(owner, "weight_tolerance", weight_tolerance)
        self.weight_tolerance = float(weight_tolerance)
        self.min_share = dict(min_share or {})
        unknown = sorted(set(self.min_share) - set(self.terms))
        if unknown:
            raise ValueError(
                f"{owner}: `min_share` names {', '.join(unknown)}, not terms of the loss "
                f"({', '.join(self.terms)})."
            )
        for term, floor in self.min_share.items():
            if not 0 < floor < 1:
                raise ValueError(f"{owner}: `min_share` of {term} must be in (0, 1), got {floor}.")
        self.patience = check_count(owner, "patience", patience, 1)
        self._weight_count = dict.fromkeys(self.terms, 0)
        self._share_count = dict.fromkeys(self.terms, 0)
        self._warned = {
            f"{kind}/{term}": False for kind in ("weight", "share") for term in self.terms
        }

    def _count(self, kind: str, counts: dict[str, int], term: str, counted: bool | None) -> bool:
        """Advances a term's count (None leaves it); True when it just reached `patience`."""
        key = f"{kind}/{term}"
        if counted is None:
            return False
        if not counted:
            counts[term], self._warned[key] = 0, False
            return False
        counts[term] += 1
        if counts[term] >= self.patience and not self._warned[key]:
            self._warned[key] = True
            return True
        return False

    def on_step(self, info: StepInfo) -> GuardEvent | None:
        messages = []
        for term in self.terms:
            effective = info.scalars.get(f"loss/{term}/effective_weight")
            if effective is None:
                continue
            configured = info.scalars[f"loss/{term}/weight"]
            reference = info.scalars[f"loss/{term}/reference"]
            counted = None
            if reference != 0 and configured > 0 and math.isfinite(effective):
                counted = abs(effective / configured - 1) > self.weight_tolerance
            if self._count("weight", self._weight_count, term, counted):
                messages.append(
                    f"term {term} has effective weight {format_figure(effective)} (weighted "
                    f"value / its plain reference) against its configured "
                    f"{format_figure(configured)}, {effective / configured:.0%} of it, for "
                    f"{self._weight_count[term]} logged steps in a row"
                )
        if not messages:
            return None
        return GuardEvent(
            self.name,
            "warn",
            f"loss term weight at step {info.step}: {'; '.join(messages)}. Something rescales "
            "the term on the way into the loss (seed 002: the extreme term times the share of "
            "extreme samples); check the term's function",
            info.epoch,
            info.step,
        )

    def on_diagnostics(self, diagnostics: Diagnostics) -> GuardEvent | None:
        messages = []
        for term, floor in self.min_share.items():
            share = diagnostics.metrics.get(f"terms/{term}/grad_share")
            value = diagnostics.metrics.get(f"terms/{term}/value")
            counted = None
            if share is not None and value is not None and value != 0 and math.isfinite(share):
                counted = share < floor
            if self._count("share", self._share_count, term, counted):
                messages.append(
                    f"term {term} carries {share:.1%} of the gradient, below its floor "
                    f"{floor:.0%}, for {self._share_count[term]} checks in a row while its data "
                    "are in the batch"
                )
        if not messages:
            return None
        return GuardEvent(
            self.name,
            "warn",
            f"loss term share at step {diagnostics.step}: {'; '.join(messages)}. The other "
            "terms drown it: raise its weight or check how it is scaled",
            diagnostics.epoch,
            diagnostics.step,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "weight_count": dict(self._weight_count),
            "share_count": dict(self._share_count),
            "warned": dict(self._warned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["weight_count"]) != set(self.terms):
            raise ValueError(
                f"LossTermGuard: the saved state is for terms {sorted(state['weight_count'])}, "
                f"this loss has {sorted(self.terms)}; its history does not carry over."
            )
        self._weight_count = dict(state["weight_count"])
        self._share_count = dict(state["share_count"])
        self._warned = dict(state["warned"])
