"""Streaming metrics for the tail of a field (heavy precipitation, extremes)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxguard._checks import check_in_range
from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    STATE_DTYPE,
    Moments,
    check_same_config,
    paired_finite_inputs,
    ratio,
)


@struct.dataclass
class ExtremeMetrics:
    """Errors on the tail of a field plus how often each side exceeds a threshold.

    A model that regresses to the mean can score a good overall MAE on precipitation while
    never predicting heavy rain; these metrics separate the tail. The tail is the set of
    elements (pixels) whose *target* exceeds `threshold` (strictly).

    `compute()` keys:
      mae_all: mean absolute error over all elements.
      mae_tail, rmse_tail: mean absolute and root mean squared error over tail elements;
        NaN when no tail element has been seen.
      extreme_freq_true: fraction of elements with ``target > threshold``.
      extreme_freq_pred: fraction of elements with ``pred > threshold`` (a collapsed model
        shows 0 here while extreme_freq_true is not).
      correlation: Pearson correlation of pred and target over all elements (exact
        streaming moments); NaN when either is constant.
      count, count_tail: included elements, and how many of them are in the tail.
      nonfinite: masked-in elements dropped because pred or target is NaN or Inf.
    """

    moments: Moments
    sum_abs_error: jax.Array
    tail_sum_abs_error: jax.Array
    tail_sum_squared_error: jax.Array
    count_tail: jax.Array
    count_pred_extreme: jax.Array
    nonfinite: jax.Array
    threshold: float = struct.field(pytree_node=False)

    @classmethod
    def empty(cls, threshold: float) -> ExtremeMetrics:
        """The metrics of no data, with the tail defined by ``target > threshold``."""
        check_in_range("ExtremeMetrics.empty", "threshold", threshold, -math.inf, math.inf)
        zero = jnp.zeros((), STATE_DTYPE)
        zero_count = jnp.zeros((), COUNT_DTYPE)
        return cls(
            moments=Moments.empty(2),
            sum_abs_error=zero,
            tail_sum_abs_error=zero,
            tail_sum_squared_error=zero,
            count_tail=zero_count,
            count_pred_extreme=zero_count,
            nonfinite=zero_count,
            threshold=float(threshold),
        )

    def update(
        self, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None
    ) -> ExtremeMetrics:
        """Adds a batch. Pure and jittable.

        Args:
          pred: `[batch, H, W]` (or any `[batch, ...]`) predicted field, e.g. mm/h.
          target: observed field, same shape and units as `pred`.
          mask: optional `[batch]` (per field) or `pred.shape` (per pixel, e.g. a land or
            radar-coverage mask); entries > 0 are included.

        Returns:
          The updated state.
        """
        pred, target, include, nonfinite = paired_finite_inputs(
            "ExtremeMetrics.update", ("pred", "target"), pred, target, mask
        )
        # Why: `where` zeroes excluded elements, whose NaN/Inf would survive a multiply.
        error = jnp.where(include, pred - target, 0.0)
        abs_error = jnp.abs(error)
        tail = include & (target > self.threshold)
        tail_error = jnp.where(tail, error, 0.0)
        batch = Moments.from_batch(jnp.stack([pred, target], axis=1), include)
        return self.replace(
            moments=self.moments.merge(batch),
            sum_abs_error=self.sum_abs_error + jnp.sum(abs_error),
            tail_sum_abs_error=self.tail_sum_abs_error + jnp.sum(jnp.abs(tail_error)),
            tail_sum_squared_error=self.tail_sum_squared_error + jnp.sum(tail_error * tail_error),
            count_tail=self.count_tail + jnp.sum(tail, dtype=COUNT_DTYPE),
            count_pred_extreme=self.count_pred_extreme
            + jnp.sum(include & (pred > self.threshold), dtype=COUNT_DTYPE),
            nonfinite=self.nonfinite + nonfinite,
        )

    def merge(self, other: ExtremeMetrics) -> ExtremeMetrics:
        """The metrics of both data sets (thresholds must match)."""
        check_same_config("ExtremeMetrics.merge", self, other, "threshold")
        return self.replace(
            moments=self.moments.merge(other.moments),
            sum_abs_error=self.sum_abs_error + other.sum_abs_error,
            tail_sum_abs_error=self.tail_sum_abs_error + other.tail_sum_abs_error,
            tail_sum_squared_error=self.tail_sum_squared_error + other.tail_sum_squared_error,
            count_tail=self.count_tail + other.count_tail,
            count_pred_extreme=self.count_pred_extreme + other.count_pred_extreme,
            nonfinite=self.nonfinite + other.nonfinite,
        )

    def compute(self) -> dict[str, float]:
        """Host-side metrics as Python floats (see the class docstring for the keys)."""
        state = jax.device_get(self)
        count = int(state.moments.count)
        count_tail = int(state.count_tail)
        return {
            "mae_all": ratio(state.sum_abs_error, count),
            "mae_tail": ratio(state.tail_sum_abs_error, count_tail),
            # Why: ratio() is NaN without tail elements and sqrt(NaN) stays NaN.
            "rmse_tail": math.sqrt(ratio(state.tail_sum_squared_error, count_tail)),
            "extreme_freq_true": ratio(count_tail, count),
            "extreme_freq_pred": ratio(state.count_pred_extreme, count),
            "correlation": state.moments.correlation(0, 1),
            "count": float(count),
            "count_tail": float(count_tail),
            "nonfinite": float(state.nonfinite),
        }
