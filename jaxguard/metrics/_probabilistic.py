"""Streaming verification of ensemble forecasts: CRPS, spread-skill, rank histogram, Brier.

An ensemble is `[batch, members, *field]` (members on axis 1) and its target
`[batch, *field]`. Every element (pixel) of every example is one forecast-observation
pair; all pairs are pooled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxguard._checks import check_ensemble, check_positive
from jaxguard.losses import crps_terms
from jaxguard.metrics._moments import COUNT_DTYPE, STATE_DTYPE, check_same_config, ratio


def _check_climatology(fn: str, climatology) -> float | None:
    if climatology is None:
        return None
    value = float(climatology)
    # Written so that NaN fails too.
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{fn}: `climatology` must lie in (0, 1) (a base rate of exceedance), got {value}."
        )
    return value


def _element_mask(fn: str, where, shape: tuple[int, ...]) -> jax.Array:
    """A bool `shape` mask from an optional per-example `[batch]` or per-element `where`."""
    if where is None:
        return jnp.ones(shape, bool)
    where_shape = jnp.shape(where)
    if where_shape not in {shape, shape[:1]}:
        raise ValueError(
            f"{fn}: `where` has shape {where_shape}; it must be {shape} (per element, the "
            f"shape of `target`) or {shape[:1]} (per example)."
        )
    where = jnp.asarray(where)
    # Why: `> 0` rather than `!= 0`, so a NaN weight under jit excludes instead of includes.
    included = where if where.dtype == bool else where > 0
    return jnp.broadcast_to(
        jnp.reshape(included, where_shape + (1,) * (len(shape) - len(where_shape))), shape
    )


@struct.dataclass
class EnsembleMetrics:
    """Probabilistic scores of an M-member ensemble, exact under any split into batches.

    Every pair (an element of `target` and the M members at that element) counts once; a
    pair is dropped when `where` is off, and dropped and counted in `nonfinite` when the
    target or any member is NaN or Inf.

    State: five float32 sums of per-pair terms that are never negative (|errors|, squared
    errors, member variances, the two CRPS sums), so plain addition cancels nothing and
    merging is addition; the rounding is that of any float32 running sum, ~1e-7 relative per
    batch (the CRPS difference is formed in float64 by `compute()`). No Chan/Welford merge
    is needed: the only variances are those across the members of one pair, formed two-pass
    within the batch, never ``E[x^2] - E[x]^2`` across batches. Everything discrete is an
    int32 count (exact to 2**31 - 1 pairs, merged by addition): the rank histogram is kept
    as the counts of ``(members below, members tied)`` and the Brier scores as the counts of
    ``(members above threshold, event)``, so the tie-split histogram, the Brier score and
    its decomposition are exact integers, turned into shares in float64 by `compute()`,
    and identical under any batch split. The state holds ``(M + 1)^2 + 2 (M + 1)`` counts.

    `compute()` keys (N = `count`, ``x_1..x_M`` the members and ``y`` the target of a pair):
      crps: fair CRPS, ``mean_i |x_i - y| - sum_{i,j} |x_i - x_j| / (2 M (M - 1))``,
        averaged over the N pairs (`jaxguard.losses.crps_ensemble`).
      crps_standard: the same with ``1 / (2 M^2)`` (scoringrules' ``estimator="nrg"``).
      ensemble_mean_mae, ensemble_mean_rmse: errors of the member mean ``xbar``.
      spread: ``sqrt(mean over pairs of var(x, ddof=1))``, the RMS member spread.
      spread_skill: ``sqrt((M + 1) / M) * spread / ensemble_mean_rmse``. For a calibrated
        ensemble (members and target exchangeable) ``E[(xbar - y)^2] = (M + 1)/M * E[s^2]``,
        so it is ~1; below 1 is under-dispersed (Fortin et al. 2014).
      rank_histogram: `[M + 1]` float64 shares, bin k = the target has k members below it.
        Ties (a dry target and dry members, both exactly 0) are split evenly: a target tied
        with t members and above b others adds ``1 / (t + 1)`` to each of the bins b .. b + t
        it could occupy. This is the expectation of the usual random tie-break, so it is
        deterministic, exact under any batch split, and flat for a calibrated ensemble.
      rank_low, rank_high: shares of bins 0 and M (target below / above every member, up
        to ties); ~1/(M + 1) each when calibrated, large for an under-dispersed ensemble.
      rank_flatness: the reliability index ``sum_k |share_k - 1/(M + 1)|`` (Delle Monache
        et al. 2006): 0 for a flat histogram, at most ``2 M / (M + 1)``.
      outside_range: share of targets strictly below the smallest or above the largest
        member (a tie with the extreme member is inside); ``2 / (M + 1)`` when calibrated
        with continuous values.
      brier: Brier score ``mean (p - o)^2`` of the exceedance probability ``p = #{x_i >
        threshold} / M`` for the event ``o = [y > threshold]``.
      brier_climatology: Brier score of the constant forecast `climatology`, ``c^2 (1 -
        obar) + (1 - c)^2 obar`` with ``obar`` the observed event frequency; with
        ``climatology=None`` it is the sample climatology ``obar (1 - obar)``.
      brier_skill: ``1 - brier / brier_climatology``; NaN when that is 0 (with the sample
        climatology: no event, or only events).
      reliability: reliability term of Murphy's decomposition over the M + 1 possible
        probabilities ``p_k = k / M``: ``sum_k n_k (p_k - obar_k)^2 / N``.
      reliability_observed: `[M + 1]` observed event frequency ``obar_k`` per bin (the
        reliability diagram), NaN for empty bins.
      reliability_counts: `[M + 1]` pairs per bin ``n_k``.
      count: included pairs; nonfinite: masked-in pairs dropped for a NaN/Inf value.
    Every value is NaN before any pair is counted (except the counts).

    References:
      Fortin, Abaza, Anctil & Turcotte (2014), "Why should ensemble spread match the RMSE
      of the ensemble mean?", J. Hydrometeorology 15.
      Hamill (2001), "Interpretation of rank histograms for verifying ensemble forecasts".
      Murphy (1973), "A new vector partition of the probability score".
    """

    sum_member_error: jax.Array
    sum_member_difference: jax.Array
    sum_mean_abs_error: jax.Array
    sum_mean_squared_error: jax.Array
    sum_variance: jax.Array
    rank_counts: jax.Array
    brier_counts: jax.Array
    nonfinite: jax.Array
    num_members: int = struct.field(pytree_node=False)
    threshold: float = struct.field(pytree_node=False)
    climatology: float | None = struct.field(pytree_node=False)

    @classmethod
    def empty(
        cls, num_members: int, threshold: float, *, climatology: float | None = None
    ) -> EnsembleMetrics:
        """The metrics of no data.

        Args:
          num_members: ensemble size M, `>= 2`.
          threshold: exceedance threshold of the Brier scores (the event is ``y >
            threshold``, strictly), finite and `>= 0` (field units, e.g. mm/h).
          climatology: reference probability of the event for `brier_skill` (e.g. the
            training base rate), in (0, 1); None uses the observed frequency of the
            verified data.
        """
        fn = "EnsembleMetrics.empty"
        if int(num_members) != num_members or num_members < 2:
            raise ValueError(f"{fn}: `num_members` must be an integer >= 2, got {num_members}.")
        check_positive(fn, "threshold", threshold, allow_zero=True)
        members = int(num_members)
        zero = jnp.zeros((), STATE_DTYPE)
        return cls(
            sum_member_error=zero,
            sum_member_difference=zero,
            sum_mean_abs_error=zero,
            sum_mean_squared_error=zero,
            sum_variance=zero,
            # [members below, members tied] of each target.
            rank_counts=jnp.zeros((members + 1, members + 1), COUNT_DTYPE),
            # [members above threshold, event].
            brier_counts=jnp.zeros((members + 1, 2), COUNT_DTYPE),
            nonfinite=jnp.zeros((), COUNT_DTYPE),
            num_members=members,
            threshold=float(threshold),
            climatology=_check_climatology(fn, climatology),
        )

    def update(
        self, ensemble: jax.Array, target: jax.Array, where: jax.Array | None = None
    ) -> EnsembleMetrics:
        """Adds a batch. Pure and jittable; a batch sharded over devices needs nothing more.

        Args:
          ensemble: `[batch, M, *field]` members on axis 1, M = `num_members`.
          target: `[batch, *field]` observed field, same units.
          where: optional bool `[batch, *field]` (per element, e.g. wet pixels or radar
            coverage) or `[batch]` (per example); non-bool entries > 0 are included.

        Returns:
          The updated state.
        """
        fn = "EnsembleMetrics.update"
        check_ensemble(fn, ensemble, target, min_members=2)
        members = self.num_members
        if jnp.shape(ensemble)[1] != members:
            raise ValueError(
                f"{fn}: `ensemble` has {jnp.shape(ensemble)[1]} members on axis 1 (shape "
                f"{jnp.shape(ensemble)}) but the metrics were made with num_members={members}."
            )
        included = _element_mask(fn, where, jnp.shape(target))
        batch = _batch_statistics(ensemble, target, included, jnp.float32(self.threshold))
        return self.merge(self.replace(**batch))

    def merge(self, other: EnsembleMetrics) -> EnsembleMetrics:
        """The metrics of both data sets (M, threshold and climatology must match)."""
        check_same_config(
            "EnsembleMetrics.merge", self, other, "num_members", "threshold", "climatology"
        )
        return jax.tree.map(jnp.add, self, other)

    def compute(self) -> dict[str, float | np.ndarray]:
        """Host-side metrics: Python floats, and float64 arrays for the per-bin keys."""
        state = jax.device_get(self)
        members = self.num_members
        rank_counts = np.asarray(state.rank_counts, np.int64)
        brier_counts = np.asarray(state.brier_counts, np.int64)
        count = int(rank_counts.sum())
        nan_bins = np.full(members + 1, math.nan)

        # Why: float64 before subtracting; the CRPS of a good ensemble is a small difference.
        member_error = float(state.sum_member_error)
        member_difference = float(state.sum_member_difference)
        crps = ratio(member_error - 0.5 * member_difference, count)
        crps_standard = ratio(
            member_error - 0.5 * (members - 1) / members * member_difference, count
        )
        # Why: ratio() is NaN without pairs and sqrt(NaN) stays NaN.
        rmse = math.sqrt(ratio(state.sum_mean_squared_error, count))
        spread = math.sqrt(ratio(state.sum_variance, count))

        # Spread each (below b, tied t) count evenly over bins b .. b + t with a difference
        # array: + n/(t+1) at b, - n/(t+1) at b + t + 1, then a cumulative sum.
        below, tied = np.meshgrid(np.arange(members + 1), np.arange(members + 1), indexing="ij")
        share = rank_counts / (tied + 1.0)
        steps = np.zeros(members + 2)
        np.add.at(steps, below.ravel(), share.ravel())
        # Why: b + t <= M for every count that can be non-zero; clip the impossible cells.
        np.add.at(steps, np.minimum(below + tied + 1, members + 1).ravel(), -share.ravel())
        histogram = np.cumsum(steps)[: members + 1] / count if count else nan_bins
        outside = (rank_counts[0, 0] + rank_counts[members, 0]) / count if count else math.nan

        per_bin = brier_counts.sum(axis=1)
        events = brier_counts[:, 1]
        probability = np.arange(members + 1) / members
        if count:
            brier = float(
                np.sum(brier_counts[:, 0] * probability**2 + events * (1.0 - probability) ** 2)
                / count
            )
            base_rate = events.sum() / count
            reference = base_rate if self.climatology is None else self.climatology
            brier_climatology = float(
                reference**2 * (1.0 - base_rate) + (1.0 - reference) ** 2 * base_rate
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                observed = np.where(per_bin > 0, events / per_bin, math.nan)
            reliability = float(
                np.sum(np.where(per_bin > 0, per_bin * (probability - observed) ** 2, 0.0)) / count
            )
        else:
            brier = brier_climatology = reliability = math.nan
            observed = nan_bins
        return {
            "crps": crps,
            "crps_standard": crps_standard,
            "ensemble_mean_mae": ratio(state.sum_mean_abs_error, count),
            "ensemble_mean_rmse": rmse,
            "spread": spread,
            "spread_skill": math.sqrt((members + 1) / members) * ratio(spread, rmse),
            "rank_histogram": histogram,
            "rank_low": float(histogram[0]),
            "rank_high": float(histogram[members]),
            "rank_flatness": float(np.sum(np.abs(histogram - 1.0 / (members + 1)))),
            "outside_range": float(outside),
            "brier": brier,
            "brier_climatology": brier_climatology,
            "brier_skill": 1.0 - ratio(brier, brier_climatology),
            "reliability": reliability,
            "reliability_observed": observed,
            "reliability_counts": per_bin.astype(np.float64),
            "count": float(count),
            "nonfinite": float(state.nonfinite),
        }


def _count(index: jax.Array, include: jax.Array, size: int) -> jax.Array:
    """`[size]` int32 counts of the included entries of a `[batch, ...]` index array."""
    batch = index.shape[0]
    weight = include.astype(COUNT_DTYPE).reshape(batch, -1)

    def one_example(index, weight):
        return jnp.zeros((size,), COUNT_DTYPE).at[index].add(weight)

    # Why: integer scatter-adds are exact and order-independent, and O(pairs) (a one-hot
    # sum costs pairs * size). One table per example, then a sum over the batch axis:
    # with the batch sharded over devices, a single scatter of sharded indices into one
    # replicated table has no unambiguous output sharding (JAX's explicit sharding
    # refuses it), while per-example tables are sharded like the batch and the sum is an
    # ordinary cross-device reduction.
    per_example = jax.vmap(one_example)(index.reshape(batch, -1), weight)
    return jnp.sum(per_example, axis=0, dtype=COUNT_DTYPE)


# Compiled once per shape when `update` is called eagerly (dozens of small ops otherwise, each
# compiled and dispatched on its own); inside a caller's jit it is inlined. The threshold is
# an argument, not a constant, so states with different thresholds share the compiled code.
@jax.jit
def _batch_statistics(
    ensemble: jax.Array, target: jax.Array, included: jax.Array, threshold: jax.Array
) -> dict[str, jax.Array]:
    """The state fields of one batch, i.e. what `update` adds to the state."""
    members = ensemble.shape[1]
    ensemble = jnp.asarray(ensemble, STATE_DTYPE)
    target = jnp.asarray(target, STATE_DTYPE)
    finite = jnp.isfinite(target) & jnp.all(jnp.isfinite(ensemble), axis=1)
    include = included & finite
    # Why: excluded pairs are set to 0 before any arithmetic, so their NaN/Inf cannot leak
    # into a sum (NaN * 0 = NaN); their terms are then dropped with `where` or weight 0.
    target = jnp.where(include, target, 0.0)
    ensemble = jnp.where(include[:, None], ensemble, 0.0)

    member_error, pair_sum = crps_terms(ensemble, target)
    # Mean |x_i - x_j| over the M (M - 1) ordered pairs i != j.
    member_difference = 2.0 * pair_sum / (members * (members - 1))
    ensemble_mean = jnp.mean(ensemble, axis=1)
    mean_error = ensemble_mean - target
    # Why: two-pass within each pair (deviations from the member mean), not E[x^2] - E[x]^2.
    deviation = ensemble - ensemble_mean[:, None]
    variance = jnp.sum(deviation * deviation, axis=1) / (members - 1)

    def total(values):
        return jnp.sum(jnp.where(include, values, 0.0))

    below = jnp.sum(ensemble < target[:, None], axis=1, dtype=COUNT_DTYPE)
    tied = jnp.sum(ensemble == target[:, None], axis=1, dtype=COUNT_DTYPE)
    above = jnp.sum(ensemble > threshold, axis=1, dtype=COUNT_DTYPE)
    event = (target > threshold).astype(COUNT_DTYPE)
    rank_counts = _count(below * (members + 1) + tied, include, (members + 1) ** 2)
    brier_counts = _count(above * 2 + event, include, (members + 1) * 2)
    return {
        "sum_member_error": total(member_error),
        "sum_member_difference": total(member_difference),
        "sum_mean_abs_error": total(jnp.abs(mean_error)),
        "sum_mean_squared_error": total(mean_error * mean_error),
        "sum_variance": total(variance),
        "rank_counts": rank_counts.reshape(members + 1, members + 1),
        "brier_counts": brier_counts.reshape(members + 1, 2),
        "nonfinite": jnp.sum(included & ~finite, dtype=COUNT_DTYPE),
    }
