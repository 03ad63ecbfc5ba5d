"""Proper scoring rules for ensemble forecasts (CRPS, energy score), as training losses.

An ensemble is `[batch, members, *field]` (members on axis 1) and its target
`[batch, *field]`. A proper score is minimised in expectation by forecasting the true
distribution, so training an M-member generator on it rewards spread where the target is
uncertain, where an MAE on each member would collapse the members onto the median.

Both scores have the kernel form ``E|X - y| - 1/2 E|X - X'|``. The ensemble estimates
are, with ``c = 1 / (2 M (M - 1))`` (fair, the default) or ``c = 1 / (2 M^2)`` (standard)::

    score = mean_i d(x_i, y) - c * sum_{i, j} d(x_i, x_j)

The fair estimate is unbiased for the score of the distribution the members are drawn
from (Ferro 2014), so an M-member ensemble is not rewarded for being under-dispersed;
the standard one is the score of the empirical distribution of the M members.

References:
  Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation".
  Ferro (2014), "Fair scores for ensemble forecasts", QJRMS 140.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxguard import _checks

_FAIR_HINT = " (the fair estimator compares members; use fair=False for a single member)"


def _compute_dtype(*arrays: jax.Array):
    # Why: bf16/f16 ensembles are scored in float32; a pair sum over M members in bf16
    # keeps ~3 significant digits.
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def crps_terms(ensemble: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two sums of the ensemble CRPS, per element, in O(M log M).

    Args:
      ensemble: `[batch, M, *field]`.
      target: `[batch, *field]`.

    Returns:
      ``(mean_i |x_i - y|, sum_{i<j} |x_i - x_j|)``, each `[batch, *field]` in the compute
      dtype (float32 or wider). ``CRPS = first - 2 c * second`` with `c` as in the module
      docstring.

    With the members sorted, ``x_(1) <= ... <= x_(M)``, the pair sum is the L-statistic
    ``sum_{i<j} |x_i - x_j| = sum_k (2k - M - 1) x_(k)``: one sort instead of the M^2
    differences, and no `[batch, M, M, *field]` temporary (a 16-member ensemble of
    256 x 256 fields would need 256 of them). The gradient of the sorted form sends
    ``2k - M - 1`` to the member in position k; members tied in value (dry pixels: many
    members at exactly 0) would get different coefficients in an arbitrary order, so
    every member of a tie gets the mean coefficient of its group, which is
    ``#{members below} - #{members above}``. That is the derivative of the pairwise form
    with ``d|0| = 0`` for tied pairs: tied members are pushed alike, whatever their index.
    """
    dtype = _compute_dtype(ensemble, target)
    ensemble = ensemble.astype(dtype)
    target = target.astype(dtype)
    members = ensemble.shape[1]
    # jnp.abs's derivative at 0 (a member equal to the target) is +1, as in absolute_error.
    member_error = jnp.mean(jnp.abs(ensemble - jnp.expand_dims(target, 1)), axis=1)
    # Why: the coefficients are a step function of the values (zero derivative), so they are
    # computed from a stopped copy and autodiff sees `sum(coefficient * x)`: the gradient is
    # `coefficient`, and no sort is differentiated (the sort JVP sorts an unsharded iota
    # beside the operand, which JAX's explicit sharding rejects for a sharded batch).
    frozen = lax.stop_gradient(ensemble)
    position = jnp.arange(members).reshape((1, members) + (1,) * (ensemble.ndim - 2))
    # `zeros_like` first, so the member ids carry the ensemble's sharding, as sort requires.
    member_id = jnp.zeros_like(frozen, jnp.int32) + position
    ordered, origin = lax.sort((frozen, member_id), dimension=1, num_keys=1)
    starts_group = jnp.concatenate(
        [jnp.ones_like(ordered[:, :1], bool), ordered[:, 1:] != ordered[:, :-1]], axis=1
    )
    ends_group = jnp.concatenate(
        [ordered[:, :-1] != ordered[:, 1:], jnp.ones_like(ordered[:, :1], bool)], axis=1
    )
    # First and last sorted position of each member's tie group (0-indexed).
    first = lax.cummax(jnp.where(starts_group, position, 0), axis=1)
    last = lax.cummin(jnp.where(ends_group, position, members - 1), axis=1, reverse=True)
    # Mean of (2k - M - 1) over the group's 1-indexed positions k = first+1 .. last+1.
    sorted_coefficient = (first + last - (members - 1)).astype(dtype)
    # Back to member order: sorting by the original member id inverts the permutation.
    _, coefficient = lax.sort((origin, sorted_coefficient), dimension=1, num_keys=1)
    # Why: the coefficients sum to 0, so shifting every member by one value leaves the sum
    # unchanged; the middle member keeps the products at the size of the spread, and a large
    # mean (1e4 +- 0.05) does not cancel in float32.
    middle = ordered[:, members // 2 : members // 2 + 1]
    pair_sum = jnp.sum(coefficient * (ensemble - middle), axis=1)
    return member_error, pair_sum


def _crps(ensemble: jax.Array, target: jax.Array, fair: bool) -> jax.Array:
    members = ensemble.shape[1]
    member_error, pair_sum = crps_terms(ensemble, target)
    # 2c: sum over ordered pairs = 2 * pair_sum.
    pair_weight = 1.0 / (members * (members - 1)) if fair else 1.0 / members**2
    return (member_error - pair_weight * pair_sum).astype(jnp.result_type(ensemble, target))


# Compiled once per shape when called eagerly; inside a caller's jit it is inlined.
_crps_jit = jax.jit(_crps, static_argnames="fair")


def crps_ensemble(ensemble: jax.Array, target: jax.Array, *, fair: bool = True) -> jax.Array:
    """Per-element continuous ranked probability score of an M-member ensemble.

    ::

        CRPS = mean_i |x_i - y| - c * sum_{i,j} |x_i - x_j|

    with ``c = 1 / (2 M (M - 1))`` when `fair` (unbiased, Ferro 2014) and ``1 / (2 M^2)``
    otherwise (the CRPS of the empirical distribution of the members). For M = 1 and
    ``fair=False`` it is the absolute error. Computed in O(M log M) from the sorted
    members (see `crps_terms`), with equal gradients for members tied in value. Units
    are those of the field; reduce with `jnp.mean` for a loss.

    Args:
      ensemble: `[batch, M, *field]` members on axis 1; `M >= 2` when `fair`.
      target: `[batch, *field]`.
      fair: the fair (unbiased) estimator when True, the standard one otherwise.

    Returns:
      `[batch, *field]`, the dtype of the inputs.

    References:
      Ferro (2014), "Fair scores for ensemble forecasts", QJRMS 140, 1917-1923.
      Zamo & Naveau (2018), "Estimation of the continuous ranked probability score with
      limited information and applications to ensemble weather forecasts".

    Example:
      >>> import jax.numpy as jnp
      >>> crps_ensemble(jnp.array([[0.0, 2.0]]), jnp.array([1.0]))
      Array([0.], dtype=float32)
    """
    _checks.check_ensemble(
        "crps_ensemble", ensemble, target, min_members=2 if fair else 1, hint=_FAIR_HINT
    )
    return _crps_jit(ensemble, target, fair=bool(fair))


def _safe_norm(difference: jax.Array, axis: int) -> jax.Array:
    """Euclidean norm along `axis`, with a zero gradient (not NaN) where the norm is 0."""
    squared = jnp.sum(difference * difference, axis=axis)
    positive = squared > 0
    # Why: d sqrt(s)/ds is infinite at s = 0 (two identical members, or a member equal to the
    # target: an all-dry field), and 0 * inf = NaN; the double where keeps both branches
    # finite and gives the subgradient 0 there.
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _energy(ensemble: jax.Array, target: jax.Array, fair: bool) -> jax.Array:
    dtype = _compute_dtype(ensemble, target)
    batch, members = ensemble.shape[:2]
    flat = ensemble.reshape(batch, members, -1).astype(dtype)
    member_error = jnp.mean(
        _safe_norm(flat - target.reshape(batch, -1)[:, None].astype(dtype), axis=2), axis=1
    )

    def add_offset(total, offset):
        # Member i against member i - offset (mod M), for every i at once: `[batch, M, D]`.
        distance = _safe_norm(flat - jnp.roll(flat, offset, axis=1), axis=2)
        # Why: offsets r and M - r visit the same ordered pairs, reversed; summing r up to
        # M // 2 with weight 2 (1 for r = M / 2, its own mirror) halves the work.
        weight = jnp.where(2 * offset == members, 1.0, 2.0).astype(dtype)
        return total + weight * jnp.sum(distance, axis=1), None

    # Why: a loop over offsets instead of a `[batch, M, M, D]` difference array, and
    # `checkpoint` so the backward pass recomputes each offset's differences instead of
    # storing M / 2 arrays of the ensemble's size.
    # `zeros_like` so the carry has the batch's sharding, as scan requires of its output.
    pair_sum, _ = lax.scan(
        jax.checkpoint(add_offset), jnp.zeros_like(member_error), jnp.arange(1, members // 2 + 1)
    )
    # pair_sum runs over ordered pairs i != j, so c applies to it directly.
    pair_weight = 1.0 / (2 * members * (members - 1)) if fair else 1.0 / (2 * members**2)
    return (member_error - pair_weight * pair_sum).astype(jnp.result_type(ensemble, target))


_energy_jit = jax.jit(_energy, static_argnames="fair")


def energy_score(ensemble: jax.Array, target: jax.Array, *, fair: bool = True) -> jax.Array:
    """Per-example energy score of an M-member ensemble over the flattened field.

    With ``||.||`` the Euclidean norm over all field elements of one example::

        ES = mean_i ||x_i - y|| - c * sum_{i,j} ||x_i - x_j||

    with ``c = 1 / (2 M (M - 1))`` when `fair` and ``1 / (2 M^2)`` otherwise. The
    multivariate CRPS: it also scores the spatial structure of each member, which a
    per-pixel CRPS does not see. Cost O(M^2 D) for D field elements, memory O(M D); the
    gradient is finite where two members (or a member and the target) coincide, with
    subgradient 0 for that pair.

    Args:
      ensemble: `[batch, M, *field]` members on axis 1; `M >= 2` when `fair`.
      target: `[batch, *field]`.
      fair: the fair (unbiased) estimator when True, the standard one otherwise.

    Returns:
      `[batch]`, the dtype of the inputs.

    References:
      Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation".
    """
    _checks.check_ensemble(
        "energy_score", ensemble, target, min_members=2 if fair else 1, hint=_FAIR_HINT
    )
    return _energy_jit(ensemble, target, fair=bool(fair))
