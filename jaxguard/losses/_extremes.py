"""Losses for fields with rare extremes (precipitation downscaling, seed 002).

The cVAE run weighted the error on extreme-rain pixels and averaged it per sample
so batches with many or few extreme pixels give comparable losses. Its first fix
then multiplied the extreme term by `extreme_sample_ratio` (the fraction of the
batch holding extremes), which silently cut `lambda_ext = 2.0` to an effective
0.2 when 10% of samples had extremes, and the tail MAE got 10x worse. The
functions here average per sample over the samples that hold extremes and apply
no such ratio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxguard import _checks
from jaxguard.losses._sums import sums_over_last_axis


def _check_fields(fn: str, pred: jax.Array, target: jax.Array) -> None:
    _checks.check_floating(fn, pred=pred, target=target)
    _checks.check_same_shape(fn, pred=pred, target=target)
    _checks.check_min_rank(fn, "pred", pred, 2)


def extreme_mae(pred: jax.Array, target: jax.Array, *, threshold: float) -> jax.Array:
    """Per-sample mean absolute error over extreme pixels, averaged over samples that have any.

    With `E_i = {pixels of sample i with target > threshold}` and
    `S = {i : |E_i| > 0}`::

        extreme_mae = mean_{i in S} ( sum_{p in E_i} |pred_ip - target_ip| / |E_i| )

    No batch-ratio scaling (the seed-002 bug). A batch without extreme pixels
    gives 0 with a zero gradient, never NaN.

    Args:
      pred: predicted fields, `[batch, ...]` (e.g. `[batch, height, width]`).
      target: true fields, same shape as `pred`.
      threshold: pixels whose target is strictly above it are extreme (field units).

    Returns:
      Scalar `[]`.
    """
    _check_fields("extreme_mae", pred, target)
    return _mae_terms_jit(pred, target, threshold)[1]


def extreme_weighted_mae(
    pred: jax.Array,
    target: jax.Array,
    *,
    threshold: float,
    lambda_base: float,
    lambda_ext: float,
) -> jax.Array:
    """`lambda_base * MAE + lambda_ext * extreme_mae`, the seed-002 reconstruction loss.

    `MAE` is over all pixels of the batch; `extreme_mae` is documented above. The
    weights are applied as given: `lambda_ext` is the weight the extreme term
    really has, whatever fraction of the batch holds extremes.

    Args:
      pred: predicted fields, `[batch, ...]`.
      target: true fields, same shape as `pred`.
      threshold: extreme-pixel threshold (field units).
      lambda_base: weight of the all-pixel MAE, `>= 0`.
      lambda_ext: weight of the extreme MAE, `>= 0` (the seed's final value is 5.0).

    Returns:
      Scalar `[]`.
    """
    _check_fields("extreme_weighted_mae", pred, target)
    _checks.check_positive("extreme_weighted_mae", "lambda_base", lambda_base, allow_zero=True)
    _checks.check_positive("extreme_weighted_mae", "lambda_ext", lambda_ext, allow_zero=True)
    base, extreme = _mae_terms_jit(pred, target, threshold)
    return lambda_base * base + lambda_ext * extreme


def _extreme_statistics(pred: jax.Array, target: jax.Array, threshold):
    """Per-sample `(|E_i|, sum over E_i of |error|, sum of |error|)`, `[batch]` each.

    One pass over both fields (`sums_over_last_axis`) with the mask, the absolute error
    and its masked copy fused into the reduction: nothing of full size is written.
    """
    batch = pred.shape[0]
    dtype = jnp.promote_types(jnp.result_type(pred, target), jnp.float32)

    def terms(p, t):
        # Compared in the target's own dtype, as `target > threshold` always was.
        is_extreme = t > threshold
        error = jnp.abs(p.astype(dtype) - t.astype(dtype))
        return is_extreme.astype(jnp.int32), jnp.where(is_extreme, error, 0.0), error

    return sums_over_last_axis(terms, pred.reshape(batch, -1), target.reshape(batch, -1))


def _extreme_weights(counts: jax.Array, dtype) -> jax.Array:
    """`1 / (|E_i| |S|)` for samples with extremes, else 0: d extreme_mae / d error sum_i."""
    has_extreme = counts > 0
    samples_with_extremes = jnp.sum(has_extreme)
    # max(., 1): samples (or batches) without extremes divide by 1 and are masked out.
    divisor = jnp.maximum(counts, 1).astype(dtype) * jnp.maximum(samples_with_extremes, 1)
    return jnp.where(has_extreme, 1.0 / divisor, 0.0)


@jax.custom_vjp
def _mae_terms(pred: jax.Array, target: jax.Array, threshold) -> tuple[jax.Array, jax.Array]:
    """`(MAE over all pixels, extreme_mae)`, with a one-pass forward and an analytic gradient."""
    return _mae_terms_fwd(pred, target, threshold)[0]


def _mae_terms_fwd(pred: jax.Array, target: jax.Array, threshold):
    counts, extreme_sums, error_sums = _extreme_statistics(pred, target, threshold)
    weights = _extreme_weights(counts, error_sums.dtype)
    dtype = jnp.result_type(pred, target)
    base = (jnp.sum(error_sums) / pred.size).astype(dtype)
    extreme = jnp.sum(weights * extreme_sums).astype(dtype)
    return (base, extreme), (pred, target, threshold, weights)


def _mae_terms_bwd(residuals, cotangents):
    """One fused elementwise pass: `d|e|/de * (g_base / n + [extreme] g_extreme w_i)`."""
    pred, target, threshold, weights = residuals
    base_cotangent, extreme_cotangent = cotangents
    batch = pred.shape[0]
    dtype = weights.dtype
    flat_pred = pred.reshape(batch, -1)
    flat_target = target.reshape(batch, -1)
    error = flat_pred.astype(dtype) - flat_target.astype(dtype)
    # jnp.abs's own derivative: +1 at error >= 0 (zero included), -1 below (and for NaN).
    direction = jnp.where(error >= 0, 1.0, -1.0)
    per_sample = (extreme_cotangent * weights)[:, None]
    pixel_weight = base_cotangent / pred.size + jnp.where(flat_target > threshold, per_sample, 0.0)
    grad_pred = (direction * pixel_weight).reshape(pred.shape)
    # The mask is a step function of the threshold: its derivative is 0 where it exists.
    return (
        grad_pred.astype(pred.dtype),
        (-grad_pred).astype(target.dtype),
        jnp.zeros_like(threshold),
    )


_mae_terms.defvjp(_mae_terms_fwd, _mae_terms_bwd)
# Compiled once per shape when called eagerly; inside a caller's jit it is inlined.
_mae_terms_jit = jax.jit(_mae_terms)


def coarsen(field: jax.Array, factor: int) -> jax.Array:
    """Block means of a field: `[batch, H, W]` -> `[batch, H // factor, W // factor]`.

    This is the coarse-graining under which mass is conserved: each coarse cell is
    the mean of its `factor x factor` fine cells. Extra trailing axes (channels)
    after `W` are kept.

    Args:
      field: `[batch, H, W, ...]` with `H` and `W` divisible by `factor`.
      factor: block edge length in fine pixels, `>= 1`.

    Returns:
      `[batch, H // factor, W // factor, ...]`.
    """
    _check_coarsenable("coarsen", "field", field, factor)
    batch, height, width, *rest = field.shape
    # Rows first, then columns: each reshape splits one axis, the only kind JAX's explicit
    # sharding (a batch sharded over devices) accepts without an output sharding.
    rows = jnp.mean(field.reshape(batch, height // factor, factor, width, *rest), axis=2)
    return jnp.mean(rows.reshape(batch, height // factor, width // factor, factor, *rest), axis=3)


def _check_coarsenable(fn: str, name: str, field: jax.Array, factor) -> None:
    """`field` is `[batch, H, W, ...]` with `H` and `W` divisible by a positive int `factor`.

    `fn` and `name` are the caller's, so an error names the argument the user passed.
    """
    _checks.check_min_rank(fn, name, field, 3)
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"{fn}: `factor` must be a positive int, got {factor!r}.")
    height, width = field.shape[1:3]
    if height % factor or width % factor:
        raise ValueError(
            f"{fn}: `{name}` has shape {tuple(field.shape)}, whose spatial shape "
            f"{(height, width)} is not divisible by `factor`={factor}."
        )


def mass_conservation(pred: jax.Array, coarse_target: jax.Array, *, factor: int) -> jax.Array:
    """Per-sample mass-conservation error `mean |coarsen(pred) - coarse_target|`.

    Zero exactly when every `factor x factor` block of the predicted fine field has
    the mean of the matching coarse cell, i.e. the downscaling adds detail without
    creating or removing water. Compare against `coarsen(true_field, factor)` or
    against a coarse predictor in the same units.

    Args:
      pred: predicted fine fields, `[batch, H, W, ...]`.
      coarse_target: coarse fields, `[batch, H // factor, W // factor, ...]`.
      factor: block edge length in fine pixels.

    Returns:
      `[batch]`.

    Raises:
      ValueError: naming `pred` and its shape when it has fewer than 3 axes or a spatial shape
        `factor` does not divide, or `coarse_target` and both shapes when they do not match.
    """
    _checks.check_floating("mass_conservation", pred=pred, coarse_target=coarse_target)
    _check_coarsenable("mass_conservation", "pred", pred, factor)
    coarse_pred = coarsen(pred, factor)
    if coarse_pred.shape != jnp.shape(coarse_target):
        raise ValueError(
            f"mass_conservation: `coarse_target` has shape {tuple(jnp.shape(coarse_target))} "
            f"but `pred` of shape {tuple(pred.shape)} coarsened by `factor`={factor} has shape "
            f"{tuple(coarse_pred.shape)}; they must be equal (no broadcasting)."
        )
    return jnp.mean(jnp.abs(coarse_pred - coarse_target), axis=tuple(range(1, pred.ndim)))
