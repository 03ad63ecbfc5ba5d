"""Regression losses, including the variance-collapse remedies of the optical-depth runs.

A regressor trained with MSE or MAE alone can reach a low loss by predicting a
near-constant value (the optical-depth run 3 predicted 0.72 +/- 0.017 for targets
of 0.94 +/- 0.48). The batch-statistic terms here penalise that directly. They
are functions of a whole batch, so they return a scalar; elementwise losses
(`absolute_error`, `pinball_loss`) return per-element values and the caller
reduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxguard import _checks
from jaxguard.losses._sums import sums_over_last_axis

# Below this variance, relative to the square of the batch's magnitude (a std below 1e-6 of
# it, a few float32 rounding steps), a batch carries no information about its spread: the
# batch terms then return 0 with a zero gradient instead of NaN.
_MIN_VARIANCE = 1e-12


def _variance(x: jax.Array) -> jax.Array:
    """Population variance (ddof=0) over all elements."""
    # Two-pass: subtracting the mean first avoids E[x^2] - E[x]^2 cancellation.
    return jnp.mean((x - jnp.mean(x)) ** 2)


def _power_of_two_scale(magnitude: jax.Array) -> jax.Array:
    """`2**e` with `2**e <= magnitude < 2**(e + 1)`; 1 for a zero, tiny or non-finite magnitude.

    Float32 squares overflow above 1.8e19 and underflow below 1.1e-19, so the batch terms
    square values divided by this scale of them (at most 2 in size); a power of two
    makes the division exact and the results equal, bit for bit, to the unscaled formula
    wherever that one neither overflows nor underflows. Its gradient is zero: every term is
    invariant to it (or, for `std_gap` and `negative_variance`, scales back by it).
    """
    magnitude = lax.stop_gradient(magnitude)
    usable = jnp.isfinite(magnitude) & (magnitude >= jnp.finfo(magnitude.dtype).tiny)
    _, exponent = jnp.frexp(jnp.where(usable, magnitude, 1.0))
    # frexp's mantissa lies in [0.5, 1): 2**(exponent - 1) is at most the magnitude, and
    # stays finite for magnitudes up to float32's largest (2**exponent would be 2**128).
    return jnp.where(usable, jnp.ldexp(jnp.ones_like(magnitude), exponent - 1), 1.0)


def _scaled(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(x / scale, scale)` with `scale = _power_of_two_scale(max |x|)`: values below 2."""
    scale = _power_of_two_scale(jnp.max(jnp.abs(x)))
    return x / scale, scale


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`numerator / denominator` and a flag that the denominator is usable.

    Double-where: the division never sees a zero denominator, so the gradient of the
    discarded branch is finite too.
    """
    usable = denominator > _MIN_VARIANCE
    safe_denominator = jnp.where(usable, denominator, 1.0)
    return numerator / safe_denominator, usable


def _check_pair(fn: str, pred: jax.Array, target: jax.Array) -> None:
    _checks.check_floating(fn, pred=pred, target=target)
    _checks.check_same_shape(fn, pred=pred, target=target)
    _checks.check_min_rank(fn, "pred", pred, 1)


def absolute_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Elementwise absolute error `|pred - target|` (the L1 / MAE loss optax lacks).

    Args:
      pred: predictions, `[...]`.
      target: targets, same shape as `pred`.

    Returns:
      `[...]`, same shape as the inputs; `jnp.mean` of it is the MAE.

    Example:
      >>> import jax.numpy as jnp
      >>> absolute_error(jnp.array([1.0, 2.0]), jnp.array([1.5, 1.0]))
      Array([0.5, 1. ], dtype=float32)
    """
    _checks.check_floating("absolute_error", pred=pred, target=target)
    _checks.check_same_shape("absolute_error", pred=pred, target=target)
    return jnp.abs(pred - target)


def variance_penalty(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Variance-preserving penalty `(1 - var(pred) / var(target))**2` over the batch.

    The seed-000 "option A" remedy, used with weight 0.5 beside the base loss. It
    uses variances, as its formula says (the seeds' logged "variance ratio" was a
    std ratio). Variances are population variances over all elements. When the
    target batch has (numerically) zero variance there is no spread to preserve:
    the penalty is 0 with a zero gradient, never NaN. "Numerically zero" is relative to the
    target's size: `std(target) <= 1e-6 * max(|c|, s)`, `c` a target element near the
    middle and `s` the scale of the deviations from it (see `_moments`), i.e. a spread of a
    few float32 rounding steps (at targets near 1 the rule is `var(target) <= 1e-12`).

    Scale: the ratio is computed at any magnitude float32 holds (tested at 1e-30 and 1e30
    against float64): deviations are summed in units of a power of two near their size
    (see `_moments`). The value overflows only where the true ratio does (`var(pred) /
    var(target)` above 3.4e38).

    Args:
      pred: predictions, `[batch, ...]`.
      target: targets, same shape as `pred`.

    Returns:
      Scalar `[]`.
    """
    _check_pair("variance_penalty", pred, target)
    return _variance_penalty_jit(pred, target)


def variance_preserving_mse(
    pred: jax.Array, target: jax.Array, *, variance_weight: float = 0.5
) -> jax.Array:
    """The seed-000 variance-preserving loss, `MSE + variance_weight * variance_penalty`.

    `mean((pred - target)**2) + variance_weight * (1 - var(pred) / var(target))**2`,
    with the variances and the zero-variance rule of `variance_penalty`. It equals
    `jnp.mean((pred - target)**2) + variance_weight * variance_penalty(pred, target)`
    but reads the inputs once for the value and once for the gradient (three passes
    and two gradient passes when written that way), which matters for large fields.

    Scale: the penalty is exact at any magnitude (see `variance_penalty`); the MSE is a
    float32 square in the data's units, so it is `inf` once `|pred - target|` exceeds about
    1.8e19 and 0 below about 1e-19 (it is not representable there), with finite gradients.

    Args:
      pred: predictions, `[batch, ...]`.
      target: targets, same shape as `pred`.
      variance_weight: weight of the penalty, `>= 0` (the seed's is 0.5).

    Returns:
      Scalar `[]`.
    """
    _check_pair("variance_preserving_mse", pred, target)
    _checks.check_positive(
        "variance_preserving_mse", "variance_weight", variance_weight, allow_zero=True
    )
    return _variance_preserving_mse_jit(pred, target, variance_weight)


def _median_of_three(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.minimum(a, b), jnp.minimum(jnp.maximum(a, b), c))


def _nine_samples(flat: jax.Array) -> list[jax.Array]:
    """Nine evenly spaced elements of a non-empty `[n]` array (scalar reads, no pass)."""
    last = flat.shape[0] - 1
    return [flat[k * last // 8] for k in range(9)]


def _ninther(samples: list[jax.Array]) -> jax.Array:
    """Tukey's ninther (median of three medians of three) of nine samples.

    A value near the middle of the data to shift the sums by, at the cost of a few scalar
    min/max (no sort, no extra pass). It is one of the elements, so it is the same
    however XLA orders the work (jit and eager agree bit for bit), and two outliers
    among the nine do not move it off the bulk of the data.
    """
    return _median_of_three(*(_median_of_three(*samples[i : i + 3]) for i in (0, 3, 6)))


def _shifted_sums(flat_pred, flat_target, shifts, scales):
    """`sum((x - c) / s)` and `sum(((x - c) / s)**2)` of pred and of target, and
    `sum((pred - target)**2)`, divided by `n`, in one pass."""
    (pred_shift, target_shift), (pred_scale, target_scale) = shifts, scales

    def terms(p, t):
        pred_dev, target_dev = (p - pred_shift) / pred_scale, (t - target_shift) / target_scale
        return pred_dev, pred_dev**2, target_dev, target_dev**2, (p - t) ** 2

    return tuple(s / flat_pred.shape[0] for s in sums_over_last_axis(terms, flat_pred, flat_target))


def _moments(pred: jax.Array, target: jax.Array):
    """Shifted, scaled moments of `pred` and of `target` and their mean squared error.

    Returns `((c, (mean - c) / s, var / s**2, s) of pred, the same of target, mse)`.

    One pass of `sum(u)` and `sum(u**2)`, `u = (x - c) / s`, gives the variance as
    `sum(u**2) / n - (sum(u) / n)**2`. With `c` the ninther of `x`, both terms are of the
    size of the variance, so the subtraction loses little (with `c = 0` it is
    `E[x^2] - E[x]^2`, which cancels catastrophically when the mean is large next to the
    spread). `s` is a power of two near the deviations' size (`_power_of_two_scale`), so
    the squares neither overflow nor underflow at any magnitude: that of the largest
    deviation, found in a first pass, on arrays below `_SAMPLED_FROM` elements; on larger
    ones that of nine sampled deviations, free, and the largest deviation only where that
    fails (a non-finite sum, or nine equal samples as in sparse or constant data; a
    `lax.cond`). `sum((pred - target)**2)` rides along in the same pass. The sums are
    blocked (`_sums`), accurate at 5e7 elements.
    """
    dtype = jnp.promote_types(jnp.result_type(pred, target), jnp.float32)
    flat_pred = pred.reshape(-1).astype(dtype)
    flat_target = target.reshape(-1).astype(dtype)
    if not flat_pred.shape[0]:  # An empty array: no deviations, any shift and scale will do.
        zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)
        return (zero, zero, zero, one), (zero, zero, zero, one), zero
    flats = (flat_pred, flat_target)
    samples = [_nine_samples(flat) for flat in flats]
    shifts = tuple(_ninther(sample) for sample in samples)

    def with_largest_deviation():
        scales = tuple(
            _power_of_two_scale(jnp.max(jnp.abs(flat - shift)))
            for flat, shift in zip(flats, shifts, strict=True)
        )
        return scales, _shifted_sums(*flats, shifts, scales)

    if flat_pred.shape[0] < _SAMPLED_FROM:
        scales, sums = with_largest_deviation()
    else:
        spreads = [
            jnp.max(jnp.abs(jnp.stack(sample) - shift))
            for sample, shift in zip(samples, shifts, strict=True)
        ]
        sampled_scales = tuple(_power_of_two_scale(spread) for spread in spreads)
        sampled = _shifted_sums(*flats, shifts, sampled_scales)
        fine = jnp.all(jnp.isfinite(jnp.stack(sampled[:4]))) & (spreads[0] > 0) & (spreads[1] > 0)
        scales, sums = lax.cond(fine, lambda: (sampled_scales, sampled), with_largest_deviation)
    pred_offset, pred_square, target_offset, target_square, mse = sums
    # Rounding can leave a constant array's variance a hair below 0; a variance is never negative.
    pred_var = jnp.maximum(pred_square - pred_offset**2, 0.0)
    target_var = jnp.maximum(target_square - target_offset**2, 0.0)
    return (
        (shifts[0], pred_offset, pred_var, scales[0]),
        (shifts[1], target_offset, target_var, scales[1]),
        mse,
    )


# From this many elements on, `_moments` scales by nine sampled deviations and makes the
# pass for the largest deviation only when those fail (a `lax.cond`); below, it always makes
# that pass: on small arrays a pass costs less than the conditional (about 50 us on XLA:CPU).
_SAMPLED_FROM = 2**16


@jax.custom_vjp
def _mse_and_variance_penalty(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(mean((pred - target)**2), (1 - var(pred) / var(target))**2)`: one forward pass
    over both inputs, and an analytic gradient that is one elementwise pass per input."""
    return _mse_and_variance_penalty_fwd(pred, target)[0]


def _mse_and_variance_penalty_fwd(pred: jax.Array, target: jax.Array):
    pred_moments, target_moments, mse = _moments(pred, target)
    (pred_shift, pred_offset, pred_var, pred_unit) = pred_moments
    (target_shift, target_offset, target_var, target_unit) = target_moments
    # The variances are in units of pred_unit**2 and target_unit**2 (powers of two: exact).
    unit_ratio = pred_unit / target_unit
    magnitude = jnp.maximum(jnp.abs(target_shift) / target_unit, 1.0)
    usable = target_var > _MIN_VARIANCE * magnitude * magnitude
    safe_var = jnp.where(usable, target_var, 1.0)
    ratio = pred_var / safe_var * (unit_ratio * unit_ratio)
    penalty = jnp.where(usable, (1.0 - ratio) ** 2, 0.0)
    # d var(x) / d x_i = 2 (x_i - mean(x)) / n; with r = var(pred) / var(target) the chain
    # rule gives -2 (1 - r) / var(target) for pred and +2 (1 - r) r / var(target) for target.
    # In units, x_i - mean(x) = unit * (u_i - offset) and var(target) = target_unit**2 * var.
    # An unusable target variance zeroes both, as the constant 0 branch would.
    scale = 4.0 * (1.0 - ratio) / (safe_var * pred.size) / target_unit
    pred_scale = jnp.where(usable, -scale * unit_ratio, 0.0)
    target_scale = jnp.where(usable, scale * ratio, 0.0)
    residuals = (
        pred,
        target,
        (pred_shift, pred_offset, pred_scale, pred_unit),
        (target_shift, target_offset, target_scale, target_unit),
    )
    dtype = jnp.result_type(pred, target)
    return (mse.astype(dtype), penalty.astype(dtype)), residuals


def _mse_and_variance_penalty_bwd(residuals, cotangents):
    """One fused elementwise pass per input:
    `g_penalty * scale * ((x - shift) / unit - offset) +- g_mse * 2 (pred - target) / n`.

    A cotangent is a `SymbolicZero` when its output is unused (`variance_penalty` drops
    the MSE): its term is left out, so the penalty's gradient for `pred` reads `pred` only.
    """
    pred, target, pred_terms, target_terms = residuals
    mse_cotangent, penalty_cotangent = cotangents
    dtype = pred_terms[0].dtype

    def gradient(x, terms, sign):
        shift, offset, scale, unit = terms
        grad = jnp.zeros(x.shape, dtype)
        if not isinstance(penalty_cotangent, SymbolicZero):
            # (x - shift) - offset keeps the deviation's digits when the mean is large.
            grad = (penalty_cotangent * scale) * ((x.astype(dtype) - shift) / unit - offset)
        if not isinstance(mse_cotangent, SymbolicZero):
            mse_scale = sign * 2.0 * mse_cotangent / pred.size
            grad = grad + mse_scale * (pred.astype(dtype) - target.astype(dtype))
        return grad.astype(x.dtype)

    return gradient(pred, pred_terms, 1.0), gradient(target, target_terms, -1.0)


def _mse_and_variance_penalty_fwd_rule(pred, target):
    # With symbolic zeros the forward rule gets `CustomVJPPrimal` wrappers.
    return _mse_and_variance_penalty_fwd(pred.value, target.value)


_mse_and_variance_penalty.defvjp(
    _mse_and_variance_penalty_fwd_rule, _mse_and_variance_penalty_bwd, symbolic_zeros=True
)


# Compiled once per shape when called eagerly (a few dozen small ops otherwise); inside a
# caller's jit they are inlined and cost nothing.
@jax.jit
def _variance_penalty_jit(pred: jax.Array, target: jax.Array) -> jax.Array:
    return _mse_and_variance_penalty(pred, target)[1]


@jax.jit
def _variance_preserving_mse_jit(pred: jax.Array, target: jax.Array, weight) -> jax.Array:
    mse, penalty = _mse_and_variance_penalty(pred, target)
    return mse + weight * penalty


def r2_penalty(pred: jax.Array, target: jax.Array) -> jax.Array:
    """`1 - R^2` of the batch: `sum((pred - target)**2) / sum((target - mean(target))**2)`.

    The seed-000 "option B" remedy (`mse - alpha * r2` is, up to a constant,
    `mse + alpha * r2_penalty`). Zero for a perfect fit, 1 for predicting the batch
    mean, above 1 for worse than the mean. A zero-variance target batch
    (`std(target) <= 1e-6 * max |target|`, a few float32 rounding steps) gives 0 with a
    zero gradient.

    Scale: both sums are taken of values divided by a power of two near `max |target|`
    (exact), so the ratio is right at any magnitude float32 holds (tested at 1e-30 and
    1e30 against float64); it overflows only where it is itself above 3.4e38.

    Args:
      pred: predictions, `[batch, ...]`.
      target: targets, same shape as `pred`.

    Returns:
      Scalar `[]`.
    """
    _check_pair("r2_penalty", pred, target)
    # The ratio does not change when both are divided by the target's scale.
    target_units, scale = _scaled(target)
    pred_units = pred / scale
    ratio, usable = _safe_ratio(jnp.mean((pred_units - target_units) ** 2), _variance(target_units))
    return jnp.where(usable, ratio, 0.0)


def std_gap(pred: jax.Array, target: jax.Array) -> jax.Array:
    """`|std(pred) - std(target)|` over the batch (seed-000 "option C").

    Population standard deviations. The square root is taken only of a variance
    above a floor (`std(x) > 1e-6 * max |x|`, a few float32 rounding steps; below, the std
    counts as 0), so a perfectly constant prediction (the collapse this term is for) still
    has a finite gradient.

    Scale: each std is computed from values divided by a power of two near their largest
    (exact) and multiplied back, so it is right at any magnitude float32 holds (tested at
    1e-30 and 1e30 against float64), never overflowing or underflowing in the squares.

    Args:
      pred: predictions, `[batch, ...]`.
      target: targets, same shape as `pred`.

    Returns:
      Scalar `[]`.
    """
    _check_pair("std_gap", pred, target)
    return jnp.abs(_std(pred) - _std(target))


def _std(x: jax.Array) -> jax.Array:
    """Population std, computed in units of `x`'s scale; 0 below the relative floor."""
    units, scale = _scaled(x)
    variance = _variance(units)
    # d sqrt(v)/dv is infinite at 0; the where keeps both branches' gradients finite.
    positive = variance > _MIN_VARIANCE
    return scale * jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)


def negative_variance(pred: jax.Array) -> jax.Array:
    """Diversity term `-var(pred)` over the batch (seed-000 recommendation 6).

    Unbounded below: it rewards spread for its own sake, so give it a small weight
    next to a loss that ties predictions to targets. `variance_penalty` is the
    bounded alternative that aims at the target's spread instead.

    Scale: the variance is computed in units of a power of two near `max |pred|` and
    multiplied back, so it is right wherever float32 holds it: for a std between about
    1.1e-19 and 1.8e19. Outside, the value itself is not a float32 (it is 0 below, `-inf`
    above); the gradient `-2 (pred - mean) / n` is right wherever it is a float32.

    Args:
      pred: predictions, `[batch, ...]`.

    Returns:
      Scalar `[]`.
    """
    _checks.check_floating("negative_variance", pred=pred)
    _checks.check_min_rank("negative_variance", "pred", pred, 1)
    return -_scaled_variance(pred)


@jax.custom_jvp
def _scaled_variance(x: jax.Array) -> jax.Array:
    """`var(x)` as `s * (s * var(x / s))`, `s` the power of two of `max |x|`.

    The derivative `2 * s * mean(u * t)`, `u = (x - mean x) / s`, is written out: autodiff of
    the value would multiply by `s**2` first (inf at a std of 1e30, 0 at 1e-18) and divide
    by `s` after.
    """
    units, scale = _scaled(x)
    return scale * (scale * _variance(units))


@_scaled_variance.defjvp
def _scaled_variance_jvp(primals, tangents):
    (x,), (tangent,) = primals, tangents
    units, scale = _scaled(x)
    centred = units - jnp.mean(units)
    return _scaled_variance(x), 2.0 * scale * jnp.mean(centred * tangent)


def pinball_loss(pred: jax.Array, target: jax.Array, *, quantile: float) -> jax.Array:
    """Quantile (pinball) loss `max(q * (t - p), (q - 1) * (t - p))`, elementwise.

    Minimised by the `quantile`-th conditional quantile; `quantile=0.5` is half
    the absolute error. Seed 000 lists it as a distribution-aware alternative to MSE.

    Args:
      pred: predictions, `[...]`.
      target: targets, same shape as `pred`.
      quantile: the quantile level `q`, in `[0, 1]`.

    Returns:
      `[...]`, same shape as the inputs.
    """
    _checks.check_floating("pinball_loss", pred=pred, target=target)
    _checks.check_same_shape("pinball_loss", pred=pred, target=target)
    _checks.check_in_range("pinball_loss", "quantile", quantile, 0.0, 1.0)
    residual = target - pred
    return jnp.maximum(quantile * residual, (quantile - 1.0) * residual)


def overweight_high_targets(
    target: jax.Array, *, threshold: float, overweight_factor: float
) -> jax.Array:
    """Per-example weights that multiply examples with `target > threshold` by a factor.

    `w = overweight_factor` where `target > threshold`, else 1. Use the weights in
    a weighted mean of a per-example loss (`jaxguard.losses.Term(..., weights=...)`).
    The optical-depth run 3 used 1.5 on high optical depths and collapsed towards
    the middle of the range; seed 001 reverted to 1.0, which makes this the identity.

    Args:
      target: per-example targets, `[batch]`.
      threshold: targets strictly above it are overweighted (target units).
      overweight_factor: weight of the high examples, `> 0`; 1 disables overweighting.

    Returns:
      `[batch]` weights, same dtype as `target`.
    """
    _checks.check_floating("overweight_high_targets", target=target)
    _checks.check_rank("overweight_high_targets", "target", target, 1)
    _checks.check_positive("overweight_high_targets", "overweight_factor", overweight_factor)
    return jnp.where(target > threshold, overweight_factor, 1.0).astype(target.dtype)
