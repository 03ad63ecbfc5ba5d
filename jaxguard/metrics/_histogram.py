"""A streaming fixed-bin histogram with exact integer counts and approximate quantiles."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxguard._checks import check_in_range, check_min_rank, check_positive
from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    STATE_DTYPE,
    check_same_config,
    inclusion_mask,
)


@struct.dataclass
class Histogram:
    """Counts of values in `bins` equal-width bins over ``[lo, hi]``, plus under/overflow.

    Bin ``i`` holds ``lo + i*width <= v < lo + (i+1)*width`` with ``width = (hi - lo)/bins``;
    a value equal to `hi` goes in the last bin, values below `lo` in `underflow`, above `hi`
    in `overflow`. Values on a bin edge may land in the neighbouring bin through float32
    rounding. NaN and Inf are not binned: they are counted in `nonfinite`. Counts are int32,
    exact up to 2**31 - 1 values; `merge` adds them, so it is exact and associative.

    Attributes:
      counts: `[bins]` int32 counts per bin.
      underflow: `[]` int32 count of values below `lo`.
      overflow: `[]` int32 count of values above `hi`.
      nonfinite: `[]` int32 count of masked-in NaN/Inf values (not binned).
      lo, hi, bins: static range and number of bins.
    """

    counts: jax.Array
    underflow: jax.Array
    overflow: jax.Array
    nonfinite: jax.Array
    lo: float = struct.field(pytree_node=False)
    hi: float = struct.field(pytree_node=False)
    bins: int = struct.field(pytree_node=False)

    @classmethod
    def empty(cls, lo: float, hi: float, bins: int) -> Histogram:
        """An empty histogram of `bins` equal-width bins over ``[lo, hi]`` (finite, lo < hi)."""
        fn = "Histogram.empty"
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{fn}: `lo` and `hi` must be finite with lo < hi, got {lo}, {hi}.")
        check_positive(fn, "bins", bins)
        if int(bins) != bins:
            raise ValueError(f"{fn}: `bins` must be an integer, got {bins}.")
        zero = jnp.zeros((), COUNT_DTYPE)
        return cls(
            counts=jnp.zeros((int(bins),), COUNT_DTYPE),
            underflow=zero,
            overflow=zero,
            nonfinite=zero,
            lo=float(lo),
            hi=float(hi),
            bins=int(bins),
        )

    def update(self, values: jax.Array, mask: jax.Array | None = None) -> Histogram:
        """Adds a batch of values.

        Args:
          values: `[batch, ...]` values (any shape of rank >= 1).
          mask: optional `[batch]` or `values.shape`; entries > 0 are counted.

        Returns:
          The updated histogram.
        """
        fn = "Histogram.update"
        check_min_rank(fn, "values", values, 1)
        included = inclusion_mask(fn, mask, jnp.shape(values)).ravel()
        values = jnp.asarray(values, STATE_DTYPE).ravel()
        finite = jnp.isfinite(values)
        counted = included & finite
        below = counted & (values < self.lo)
        above = counted & (values > self.hi)
        in_range = counted & ~below & ~above
        # Why: clip so that v == hi (index == bins) lands in the last bin, and so that rounding
        # and the placeholder indices of excluded values stay in bounds.
        index = jnp.clip(
            jnp.floor((values - self.lo) * (self.bins / (self.hi - self.lo))), 0, self.bins - 1
        )
        index = jnp.where(in_range, index, 0).astype(jnp.int32)
        return self.replace(
            counts=self.counts.at[index].add(in_range.astype(COUNT_DTYPE)),
            underflow=self.underflow + jnp.sum(below, dtype=COUNT_DTYPE),
            overflow=self.overflow + jnp.sum(above, dtype=COUNT_DTYPE),
            nonfinite=self.nonfinite + jnp.sum(included & ~finite, dtype=COUNT_DTYPE),
        )

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both value sets (counts add; ranges must match)."""
        check_same_config("Histogram.merge", self, other, "lo", "hi", "bins")
        return jax.tree.map(jnp.add, self, other)

    def edges(self) -> np.ndarray:
        """The `[bins + 1]` float64 bin edges."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def compute(self) -> dict:
        """Host-side summary: `counts` and `edges` (lists), `underflow`, `overflow`,
        `count` (all finite values, out-of-range ones included) and `nonfinite`."""
        state = jax.device_get(self)
        counts = [int(c) for c in state.counts]
        underflow, overflow = int(state.underflow), int(state.overflow)
        return {
            "counts": counts,
            "edges": self.edges().tolist(),
            "underflow": float(underflow),
            "overflow": float(overflow),
            "count": float(underflow + sum(counts) + overflow),
            "nonfinite": float(state.nonfinite),
        }

    def quantile(self, q: float) -> float:
        """Host-side estimate of the `q`-quantile of all finite values seen.

        Finds the bin where the cumulative count reaches ``q * count`` and interpolates
        linearly inside it (values assumed uniform within a bin). That bin also holds
        ``numpy.quantile(values, q, method="inverted_cdf")`` (the smallest value with
        empirical CDF >= q), so the estimate is within one bin width of it for any data.
        NumPy's default linear method can differ by more where neighbouring order statistics
        are far apart (sparse tails, empty bins); for dense data it is within a bin width too.
        If the quantile falls among the underflow (overflow) values the result is `lo`
        (`hi`): the histogram knows nothing finer there. NaN when no finite value was seen.

        Args:
          q: quantile level in [0, 1].

        Returns:
          The estimate as a Python float.
        """
        check_in_range("Histogram.quantile", "q", q, 0.0, 1.0)
        state = jax.device_get(self)
        # Why: int64 on the host, so the cumulative sum cannot overflow.
        slots = np.concatenate(
            [[int(state.underflow)], np.asarray(state.counts, np.int64), [int(state.overflow)]]
        )
        total = int(slots.sum())
        if total == 0:
            return math.nan
        rank = q * total
        cumulative = np.cumsum(slots)
        # Why: the first non-empty slot whose cumulative count reaches the rank; skipping empty
        # slots makes q = 0 return the lowest occupied bin's left edge, not `lo`.
        slot = int(np.flatnonzero((cumulative >= rank) & (slots > 0))[0])
        if slot == 0:
            return self.lo
        if slot == self.bins + 1:
            return self.hi
        fraction = (rank - (cumulative[slot] - slots[slot])) / slots[slot]
        edges = self.edges()
        return float(edges[slot - 1] + fraction * (edges[slot] - edges[slot - 1]))
