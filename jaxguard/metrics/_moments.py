"""Exact streaming moments and the pieces every jaxguard metric shares.

`Moments` keeps, for ``k`` paired variables, the count, the means and the
co-moment matrix ``C[i, j] = sum((x_i - mean_i) * (x_j - mean_j))`` (its diagonal
is Welford's M2). Batches are reduced two-pass and merged with Chan et al.'s
update, so variances, covariances, correlations and R^2 stay accurate in float32
even when the mean is large next to the spread (a target of 1e4 +- 0.1). The
textbook shortcut ``E[x^2] - E[x]^2`` (CLU's `Std`, metrax's R^2, torchmetrics'
`R2Score`) cancels catastrophically there: in float32, ``E[x^2] = 1e8`` has a
spacing of 8, so a variance of 0.01 is lost entirely.

Reference: Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise
algorithm for computing sample variances".
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxguard._checks import (
    check_min_rank,
    check_nonnegative_array,
    check_rank,
    check_same_shape,
)

#: Floating dtype of every streaming statistic.
STATE_DTYPE = jnp.float32
#: Integer dtype of every count: exact up to 2**31 - 1 (about 2.1e9) elements, where float32
#: counts stop being exact past 2**24 (about 1.7e7, i.e. 256 fields of 256 x 256 pixels).
COUNT_DTYPE = jnp.int32


@struct.dataclass
class Moments:
    """Count, means and co-moment matrix of ``k`` paired variables, mergeable exactly.

    The mean is stored as ``shift + shifted_mean``: `shift` is a rough mean of the first
    non-empty batch and `shifted_mean` the small offset from it. Keeping the two apart
    means the difference of two states' means (the ``delta`` of the Chan merge) is formed
    from small numbers, so it keeps full float32 relative precision even when the mean is
    1e5 times the spread; a single float32 mean would round ``delta`` to ``ulp(mean)``.

    Attributes:
      count: `[]` int32 number of included observations.
      shift: `[k]` float32 reference point of the stored means.
      shifted_mean: `[k]` float32 mean minus `shift`.
      comoment: `[k, k]` float32 sums of products of deviations from the mean; the
        diagonal holds each variable's M2 = sum((x - mean)^2).
    """

    count: jax.Array
    shift: jax.Array
    shifted_mean: jax.Array
    comoment: jax.Array

    @classmethod
    def empty(cls, num_variables: int) -> Moments:
        """The moments of no observations of `num_variables` paired variables."""
        k = int(num_variables)
        return cls(
            count=jnp.zeros((), COUNT_DTYPE),
            shift=jnp.zeros((k,), STATE_DTYPE),
            shifted_mean=jnp.zeros((k,), STATE_DTYPE),
            comoment=jnp.zeros((k, k), STATE_DTYPE),
        )

    @classmethod
    def from_batch(cls, values: jax.Array, include: jax.Array) -> Moments:
        """The moments of one batch, computed two-pass.

        Args:
          values: `[n, k]` observations of ``k`` paired variables; rows with
            ``include == False`` may hold anything, NaN and Inf included.
          include: `[n]` bool, which rows count.

        Returns:
          A `Moments` with `count = sum(include)`.
        """
        fn = "Moments.from_batch"
        check_rank(fn, "values", values, 2)
        check_rank(fn, "include", include, 1)
        if jnp.shape(include)[0] != jnp.shape(values)[0]:
            raise ValueError(
                f"{fn}: `include` has {jnp.shape(include)[0]} rows but `values` has "
                f"{jnp.shape(values)[0]}; they must be equal."
            )
        values = jnp.asarray(values, STATE_DTYPE)
        include = jnp.asarray(include, bool)[:, None]
        count = jnp.sum(include, dtype=COUNT_DTYPE)
        # Why: an empty batch divides 0 by 1 and yields zeros instead of 0/0 = NaN.
        denominator = jnp.maximum(count, 1).astype(STATE_DTYPE)
        # Why: `where`, not a multiply by the mask, so excluded NaN/Inf cannot leak (NaN*0=NaN).
        kept = jnp.where(include, values, 0.0)
        # Why: a rough mean first; the float32 sum may be off by ~n*eps*|x|, the next pass
        # removes that, and x - shift is exact for x near shift (Sterbenz), so no cancellation.
        shift = jnp.sum(kept, axis=0) / denominator
        shifted = jnp.where(include, values - shift, 0.0)
        shifted_mean = jnp.sum(shifted, axis=0) / denominator
        centered = jnp.where(include, shifted - shifted_mean, 0.0)
        # Why: elementwise products and a sum, not a matmul, so accelerators cannot drop
        # to TF32/bf16 matmul precision.
        comoment = jnp.sum(centered[:, :, None] * centered[:, None, :], axis=0)
        return cls(count=count, shift=shift, shifted_mean=shifted_mean, comoment=comoment)

    def merge(self, other: Moments) -> Moments:
        """Chan's pairwise merge: the moments of the union of both observation sets."""
        count_a = self.count.astype(STATE_DTYPE)
        count_b = other.count.astype(STATE_DTYPE)
        # Why: when both sides are empty the total is 0; dividing by max(total, 1) keeps every
        # result at zero (each correction below has a factor count_b or count_a*count_b = 0)
        # instead of 0/0 = NaN, so empty devices and fully masked batches are harmless.
        weight_b = count_b / jnp.maximum(count_a + count_b, 1.0)
        # Why: shift difference first; for nearby shifts it is exact (Sterbenz), so delta
        # keeps the precision of the small shifted means instead of ulp(mean).
        delta = (other.shift - self.shift) + (other.shifted_mean - self.shifted_mean)
        a_empty = self.count == 0
        # Why: when `self` is empty its shift is a placeholder; take `other`'s as is rather than
        # re-expressing it around 0, which would round it to ulp(mean).
        shift = jnp.where(a_empty, other.shift, self.shift)
        shifted_mean = jnp.where(a_empty, other.shifted_mean, self.shifted_mean + delta * weight_b)
        # Why: count_a * weight_b = n_a*n_b/n without forming the large product n_a*n_b.
        comoment = self.comoment + other.comoment + jnp.outer(delta, delta) * (count_a * weight_b)
        return Moments(
            count=self.count + other.count,
            shift=shift,
            shifted_mean=shifted_mean,
            comoment=comoment,
        )

    def means(self) -> np.ndarray:
        """Host-side `[k]` float64 means; NaN when there are no observations."""
        state = jax.device_get(self)
        if int(state.count) == 0:
            return np.full(state.shift.shape, math.nan)
        return np.asarray(state.shift, np.float64) + np.asarray(state.shifted_mean, np.float64)

    def variances(self) -> np.ndarray:
        """Host-side `[k]` float64 population variances (ddof=0); NaN when empty."""
        state = jax.device_get(self)
        if int(state.count) == 0:
            return np.full(state.shift.shape, math.nan)
        return np.diag(np.asarray(state.comoment, np.float64)) / int(state.count)

    def correlation(self, i: int = 0, j: int = 1) -> float:
        """Host-side Pearson correlation of variables `i` and `j`; NaN when either is constant."""
        comoment = np.asarray(jax.device_get(self.comoment), np.float64)
        r = ratio(comoment[i, j], math.sqrt(comoment[i, i] * comoment[j, j]))
        # Why: rounding can push |r| a hair past 1.
        return float(np.clip(r, -1.0, 1.0))


def merge_stacked(stacked):
    """Merges a state whose leaves carry an extra leading axis into one state.

    Use it on per-device states gathered with `jax.lax.all_gather` (or stacked with
    ``jax.tree.map(lambda *x: jnp.stack(x), *states)``). The merge is a pairwise tree of
    the class's own `merge` (vmapped per level), so it is as exact as merging one by one
    and works eagerly, under `jit` and inside `shard_map`/`pmap`.

    Args:
      stacked: any jaxguard metric state (or `Moments`) with leaves of shape `[n, ...]`.

    Returns:
      The merged state, leaves without the leading axis.
    """
    size = jax.tree.leaves(stacked)[0].shape[0]
    if size == 0:
        raise ValueError("merge_stacked: `stacked` has an empty leading axis; nothing to merge.")
    merge_pairs = jax.vmap(lambda a, b: a.merge(b))
    while size > 1:
        half = size // 2
        first = jax.tree.map(operator.itemgetter(slice(0, half)), stacked)
        second = jax.tree.map(operator.itemgetter(slice(half, 2 * half)), stacked)
        # Why: with an odd size the last state has no partner; it moves up a level unmerged.
        leftover = jax.tree.map(operator.itemgetter(slice(2 * half, size)), stacked)
        stacked = jax.tree.map(
            lambda m, x: jnp.concatenate([m, x]), merge_pairs(first, second), leftover
        )
        size = half + size % 2
    return jax.tree.map(lambda x: x[0], stacked)


def ratio(numerator, denominator) -> float:
    """Host-side ``numerator / denominator`` as a Python float; NaN when the denominator is 0."""
    numerator = float(numerator)
    denominator = float(denominator)
    return numerator / denominator if denominator != 0 else math.nan


def inclusion_mask(fn: str, mask, shape: tuple[int, ...]) -> jax.Array:
    """A bool mask of `shape` from an optional per-example or per-element `mask`.

    `mask` may be `None` (everything counts), `[batch]` (one flag per example, broadcast over
    the trailing axes) or exactly `shape`. Bool or float: entries > 0 are included. Fractional
    values are not weights, because every count is an exact integer.
    """
    if mask is None:
        return jnp.ones(shape, bool)
    mask_shape = jnp.shape(mask)
    if mask_shape not in {shape, shape[:1]}:
        raise ValueError(
            f"{fn}: `mask` has shape {mask_shape}; it must be {shape[:1]} (per example) "
            f"or {shape} (per element)."
        )
    check_nonnegative_array(fn, "mask", mask)
    mask = jnp.asarray(mask)
    # Why: `> 0` rather than `!= 0`, so a NaN weight under jit excludes instead of includes.
    included = mask > 0 if mask.dtype != bool else mask
    return jnp.broadcast_to(
        jnp.reshape(included, mask_shape + (1,) * (len(shape) - len(mask_shape))), shape
    )


def paired_finite_inputs(fn: str, names: tuple[str, str], first, second, mask):
    """Checks and flattens two same-shape `[batch, ...]` inputs for a streaming update.

    Returns:
      ``(first, second, include, nonfinite)``: the inputs as flat float32 `[n]`, the flat
      bool `include` (mask on and both values finite) and the int32 count of masked-in
      elements dropped because either value is NaN or Inf.
    """
    check_min_rank(fn, names[0], first, 1)
    check_min_rank(fn, names[1], second, 1)
    check_same_shape(fn, **{names[0]: first, names[1]: second})
    included = inclusion_mask(fn, mask, jnp.shape(first)).ravel()
    first = jnp.asarray(first, STATE_DTYPE).ravel()
    second = jnp.asarray(second, STATE_DTYPE).ravel()
    finite = jnp.isfinite(first) & jnp.isfinite(second)
    nonfinite = jnp.sum(included & ~finite, dtype=COUNT_DTYPE)
    return first, second, included & finite, nonfinite


def check_same_config(fn: str, a, b, *names: str) -> None:
    """Fails unless two states agree on the named static configuration fields."""
    for name in names:
        if getattr(a, name) != getattr(b, name):
            raise ValueError(
                f"{fn}: cannot merge states with different `{name}` "
                f"({getattr(a, name)!r} vs {getattr(b, name)!r})."
            )
