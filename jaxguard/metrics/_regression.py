"""Streaming regression metrics whose variances and R^2 stay exact in float32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    STATE_DTYPE,
    Moments,
    paired_finite_inputs,
    ratio,
)

# Why: sklearn's mean_absolute_percentage_error guards |target| = 0 with float64's epsilon.
_MAPE_EPSILON = float(np.finfo(np.float64).eps)


@struct.dataclass
class RegressionMetrics:
    """Streaming regression metrics over every element of `pred` and `target`.

    All elements are pooled: for `[batch, ...]` inputs the result equals scikit-learn on the
    flattened arrays (not sklearn's per-output average). Variances, R^2 and the correlation
    come from exact streaming moments (`Moments`), so a target of 1e4 +- 0.1 is handled in
    float32, where ``E[x^2] - E[x]^2`` would return noise.

    `compute()` keys:
      r2: ``1 - SSE/SST`` with ``SST = sum((target - mean(target))^2)`` (sklearn's
        `r2_score`). NaN when the target is constant (sklearn's ``force_finite=False``).
      mae, mse, rmse: mean absolute error, mean squared error and its square root.
      mape: ``mean(|target - pred| / max(|target|, eps))`` with eps = float64's machine
        epsilon, as sklearn's `mean_absolute_percentage_error` (a fraction, not percent).
      bias: ``mean(pred - target)``.
      pred_mean, target_mean: means.
      pred_std, target_std: population standard deviations (ddof=0).
      std_ratio: ``pred_std / target_std``; variance_ratio: ``pred_var / target_var``.
        The seeds of this project logged the std ratio under the name "variance ratio";
        the two differ a lot when the predictions collapse (a 3.4% std ratio is a 0.12%
        variance ratio), so jaxguard reports both under their honest names. NaN when the
        target is constant.
      spread, target_spread: ``max - min`` of pred and of target.
      pearson: Pearson correlation of pred and target; NaN when either is constant.
      count: number of included elements; nonfinite: masked-in elements dropped because
        pred or target is NaN or Inf (they are excluded from every other key).
    Every value is NaN when no element has been counted (except the two counts).
    """

    moments: Moments
    sum_error: jax.Array
    sum_abs_error: jax.Array
    sum_squared_error: jax.Array
    sum_abs_percentage_error: jax.Array
    pred_min: jax.Array
    pred_max: jax.Array
    target_min: jax.Array
    target_max: jax.Array
    nonfinite: jax.Array

    @classmethod
    def empty(cls) -> RegressionMetrics:
        """The metrics of no data."""
        zero = jnp.zeros((), STATE_DTYPE)
        inf = jnp.full((), jnp.inf, STATE_DTYPE)
        return cls(
            moments=Moments.empty(2),
            sum_error=zero,
            sum_abs_error=zero,
            sum_squared_error=zero,
            sum_abs_percentage_error=zero,
            pred_min=inf,
            pred_max=-inf,
            target_min=inf,
            target_max=-inf,
            nonfinite=jnp.zeros((), COUNT_DTYPE),
        )

    def update(
        self, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None
    ) -> RegressionMetrics:
        """Adds a batch. Pure and jittable.

        Args:
          pred: `[batch]` or `[batch, ...]` predictions.
          target: targets, same shape as `pred`.
          mask: optional `[batch]` (per example) or `pred.shape` (per element); entries > 0
            are included.

        Returns:
          The updated state.
        """
        pred, target, include, nonfinite = paired_finite_inputs(
            "RegressionMetrics.update", ("pred", "target"), pred, target, mask
        )
        # Why: `where` zeroes excluded elements, whose NaN/Inf would survive a multiply.
        error = jnp.where(include, pred - target, 0.0)
        abs_error = jnp.abs(error)
        # Why: sklearn's eps guard for |target| = 0; the inner `where` keeps an excluded NaN
        # target out of the denominator (0 / NaN is NaN).
        safe_target = jnp.where(include, target, 1.0)
        percentage = abs_error / jnp.maximum(jnp.abs(safe_target), _MAPE_EPSILON)
        batch = Moments.from_batch(jnp.stack([pred, target], axis=1), include)
        return self.replace(
            moments=self.moments.merge(batch),
            sum_error=self.sum_error + jnp.sum(error),
            sum_abs_error=self.sum_abs_error + jnp.sum(abs_error),
            # Why: a plain sum of squares is safe; squared errors are non-negative, no cancellation.
            sum_squared_error=self.sum_squared_error + jnp.sum(error * error),
            sum_abs_percentage_error=self.sum_abs_percentage_error + jnp.sum(percentage),
            pred_min=jnp.minimum(self.pred_min, jnp.min(jnp.where(include, pred, jnp.inf))),
            pred_max=jnp.maximum(self.pred_max, jnp.max(jnp.where(include, pred, -jnp.inf))),
            target_min=jnp.minimum(self.target_min, jnp.min(jnp.where(include, target, jnp.inf))),
            target_max=jnp.maximum(self.target_max, jnp.max(jnp.where(include, target, -jnp.inf))),
            nonfinite=self.nonfinite + nonfinite,
        )

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        """The metrics of both data sets."""
        return self.replace(
            moments=self.moments.merge(other.moments),
            sum_error=self.sum_error + other.sum_error,
            sum_abs_error=self.sum_abs_error + other.sum_abs_error,
            sum_squared_error=self.sum_squared_error + other.sum_squared_error,
            sum_abs_percentage_error=self.sum_abs_percentage_error + other.sum_abs_percentage_error,
            pred_min=jnp.minimum(self.pred_min, other.pred_min),
            pred_max=jnp.maximum(self.pred_max, other.pred_max),
            target_min=jnp.minimum(self.target_min, other.target_min),
            target_max=jnp.maximum(self.target_max, other.target_max),
            nonfinite=self.nonfinite + other.nonfinite,
        )

    def compute(self) -> dict[str, float]:
        """Host-side metrics as Python floats (see the class docstring for the keys)."""
        state = jax.device_get(self)
        count = int(state.moments.count)
        pred_mean, target_mean = state.moments.means()
        # Why: NaN when empty, and NaN propagates through sqrt/ratio below, so no special cases.
        pred_var, target_var = state.moments.variances()
        mse = ratio(state.sum_squared_error, count)
        # Why: min/max start at +-inf; their difference is meaningless before any data.
        spreads = (
            (float(state.pred_max - state.pred_min), float(state.target_max - state.target_min))
            if count
            else (math.nan, math.nan)
        )
        return {
            "r2": 1.0 - ratio(state.sum_squared_error, state.moments.comoment[1, 1]),
            "mae": ratio(state.sum_abs_error, count),
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mape": ratio(state.sum_abs_percentage_error, count),
            "bias": ratio(state.sum_error, count),
            "pred_mean": float(pred_mean),
            "pred_std": math.sqrt(pred_var),
            "target_mean": float(target_mean),
            "target_std": math.sqrt(target_var),
            "std_ratio": ratio(math.sqrt(pred_var), math.sqrt(target_var)),
            "variance_ratio": ratio(pred_var, target_var),
            "spread": spreads[0],
            "target_spread": spreads[1],
            "pearson": state.moments.correlation(0, 1),
            "count": float(count),
            "nonfinite": float(state.nonfinite),
        }
