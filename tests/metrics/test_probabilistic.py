"""Tests for EnsembleMetrics against scoringrules and float64 NumPy re-derivations."""

import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scoringrules as sr

from jaxguard.metrics import EnsembleMetrics, merge_stacked

_MEMBERS = 6
_THRESHOLD = 5.0
_SHAPE = (6, _MEMBERS, 8, 8)  # [batch, members, H, W]
_FIELD = _SHAPE[:1] + _SHAPE[2:]
_ALL = np.ones(_FIELD, bool)
_EXAMPLE = np.arange(_FIELD[0])[:, None, None]
# Every test on _SHAPE goes through these: one compilation each for the whole file.
_update = jax.jit(EnsembleMetrics.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
_ARRAY_KEYS = ("rank_histogram", "reliability_observed", "reliability_counts")


def _examples_between(lo, hi):
    """Per-element mask selecting examples lo..hi-1: a smaller batch without a new shape."""
    return _ALL & (_EXAMPLE >= lo) & (_EXAMPLE < hi)


def _rain(rng, shape):
    """Gamma(0.5, 8) rain with 60% exact zeros."""
    return np.where(rng.random(shape) < 0.6, 0.0, rng.gamma(0.5, 8.0, size=shape))


def _rain_pair(seed=0, shape=_SHAPE):
    """A rain target and an ensemble that follows it loosely: dry members and a dry target
    tie at 0 all the time, and some members match the target exactly (ties when wet)."""
    rng = np.random.default_rng(seed)
    field = shape[:1] + shape[2:]
    target = _rain(rng, field)
    ensemble = 0.7 * target[:, None] * rng.lognormal(0.0, 0.5, size=shape) + _rain(rng, shape)
    ensemble = np.where(rng.random(shape) < 0.3, 0.0, ensemble)
    copy = rng.random(field) < 0.1
    ensemble[:, 1][copy] = target[copy]
    return ensemble.astype(np.float32), target.astype(np.float32)


def _reference(ensemble, target, include, threshold=_THRESHOLD, climatology=None):
    """Every key in float64, written out plainly; the rank histogram one target at a time."""
    members = ensemble.shape[1]
    x = np.moveaxis(np.asarray(ensemble, np.float64), 1, -1)[include]  # [N, M]
    y = np.asarray(target, np.float64)[include]  # [N]
    n = len(y)
    skill = np.abs(x - y[:, None]).mean(axis=1)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    crps = skill - pairs / (2 * members * (members - 1))
    crps_standard = skill - pairs / (2 * members**2)
    error = x.mean(axis=1) - y
    rmse = np.sqrt(np.mean(error**2))
    spread = np.sqrt(np.mean(x.var(axis=1, ddof=1)))

    histogram = np.zeros(members + 1)
    outside = 0
    for xs, obs in zip(x, y, strict=True):
        below = int(np.sum(xs < obs))
        tied = int(np.sum(xs == obs))
        for rank in range(below, below + tied + 1):
            histogram[rank] += 1.0 / (tied + 1)
        outside += obs < xs.min() or obs > xs.max()
    histogram /= n

    above = np.sum(x > threshold, axis=1)
    probability = above / members
    event = (y > threshold).astype(np.float64)
    brier = np.mean((probability - event) ** 2)
    reference = event.mean() if climatology is None else climatology
    brier_climatology = np.mean((reference - event) ** 2)
    counts = np.array([np.sum(above == k) for k in range(members + 1)], np.float64)
    observed = np.array(
        [event[above == k].mean() if counts[k] else np.nan for k in range(members + 1)]
    )
    reliability = sum(
        counts[k] * (k / members - observed[k]) ** 2 for k in range(members + 1) if counts[k]
    )
    return {
        "crps": crps.mean(),
        "crps_standard": crps_standard.mean(),
        "ensemble_mean_mae": np.mean(np.abs(error)),
        "ensemble_mean_rmse": rmse,
        "spread": spread,
        "spread_skill": np.sqrt((members + 1) / members) * spread / rmse,
        "rank_histogram": histogram,
        "rank_low": histogram[0],
        "rank_high": histogram[-1],
        "rank_flatness": np.sum(np.abs(histogram - 1 / (members + 1))),
        "outside_range": outside / n,
        "brier": brier,
        "brier_climatology": brier_climatology,
        "brier_skill": 1 - brier / brier_climatology,
        "reliability": reliability / n,
        "reliability_observed": observed,
        "reliability_counts": counts,
        "count": float(n),
        "nonfinite": 0.0,
    }


def _assert_matches(result, expected, rtol=1e-5, atol=1e-6):
    assert list(result) == list(expected)
    for key, want in expected.items():
        np.testing.assert_allclose(result[key], want, rtol=rtol, atol=atol, err_msg=key)


def _empty(climatology=None):
    return EnsembleMetrics.empty(_MEMBERS, _THRESHOLD, climatology=climatology)


def test_streamed_rain_matches_float64_reference_and_scoringrules():
    ensemble, target = _rain_pair()
    state = _empty()
    for lo, hi in ((0, 2), (2, 6)):
        state = _update(state, ensemble, target, _examples_between(lo, hi))
    result = state.compute()
    expected = _reference(ensemble, target, _ALL)
    _assert_matches(result, expected)
    # The data must exercise what the metric is for: ties, events and several Brier bins.
    assert np.sum(expected["reliability_counts"] > 0) >= 4
    assert 0.02 < np.mean(target > _THRESHOLD) < 0.5
    assert np.sum((target == 0)[:, None] & (ensemble == 0)) > 500
    assert np.sum((ensemble == target[:, None]) & (target > 0)[:, None]) > 20

    y, x = target.astype(np.float64), ensemble.astype(np.float64)
    for key, estimator in (("crps", "fair"), ("crps_standard", "nrg")):
        scores = sr.crps_ensemble(y, x, m_axis=1, estimator=estimator, backend="numpy")
        assert result[key] == pytest.approx(np.mean(scores), rel=1e-5)
    probability = np.mean(x > _THRESHOLD, axis=1)
    brier = sr.brier_score((y > _THRESHOLD).astype(np.float64), probability, backend="numpy")
    assert result["brier"] == pytest.approx(np.mean(brier), rel=1e-12)


def test_rank_histogram_splits_ties_evenly_and_events_are_strict():
    """Three hand-made pairs, M = 3, threshold 1:

    - target 0, members (0, 0, 1): 0 below, 2 tied -> bins 0, 1, 2 get 1/3 each; p = 0
      (a member at the threshold is not above it), no event.
    - target 5, members (0, 2, 3): above every member -> bin 3; p = 2/3, event.
    - target 1, members (1, 1, 1): 3 tied -> every bin gets 1/4; p = 0, no event (at the
      threshold is not above it).
    """
    ensemble = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    target = np.array([0.0, 5.0, 1.0], np.float32)
    result = EnsembleMetrics.empty(3, 1.0).update(ensemble, target).compute()
    np.testing.assert_allclose(result["rank_histogram"], np.array([7, 7, 7, 15]) / 36)
    assert result["rank_low"] == pytest.approx(7 / 36)
    assert result["rank_high"] == pytest.approx(15 / 36)
    # Only the second target is outside; a tie with the extreme member is inside.
    assert result["outside_range"] == pytest.approx(1 / 3)
    assert result["brier"] == pytest.approx((1 / 3) ** 2 / 3)
    np.testing.assert_array_equal(result["reliability_counts"], [2, 0, 1, 0])
    np.testing.assert_array_equal(result["reliability_observed"], [0.0, np.nan, 1.0, np.nan])


def test_where_mask_keeps_only_wet_pixels():
    ensemble, target = _rain_pair(seed=1)
    wet = target > 0
    result = _update(_empty(), ensemble, target, wet).compute()
    _assert_matches(result, _reference(ensemble, target, wet))
    assert result["count"] == wet.sum() < 0.6 * wet.size


def test_where_mask_excludes_garbage_outside_coverage():
    ensemble, target = _rain_pair(seed=2)
    coverage = np.random.default_rng(3).random(_FIELD) > 0.3
    garbage = np.where(np.arange(coverage.size).reshape(_FIELD) % 2, np.nan, 50.0)
    poisoned_target = np.where(coverage, target, garbage).astype(np.float32)
    poisoned = np.where(coverage[:, None], ensemble, np.inf).astype(np.float32)
    result = _update(_empty(), poisoned, poisoned_target, coverage).compute()
    _assert_matches(result, _reference(ensemble, target, coverage))
    assert result["nonfinite"] == 0.0


def test_per_example_where_mask():
    ensemble, target = _rain_pair(seed=4)
    keep = np.array([True, False, True, True, False, True])
    result = EnsembleMetrics.empty(_MEMBERS, _THRESHOLD).update(ensemble, target, keep).compute()
    _assert_matches(result, _reference(ensemble, target, _ALL & keep[:, None, None]))


def test_nonfinite_pairs_are_counted_and_excluded():
    ensemble, target = _rain_pair(seed=5)
    bad_ensemble, bad_target = ensemble.copy(), target.copy()
    bad_ensemble[0, 3, 1, 1] = np.nan
    bad_ensemble[1, 0, 2, 2] = np.inf
    bad_ensemble[1, 5, 2, 2] = -np.inf  # the same pair as above: counted once
    bad_target[2, 4, 4] = np.nan
    bad_target[3, 0, 0] = np.inf
    where = _ALL.copy()
    where[3, 0, 0] = False  # masked out: neither included nor counted as non-finite
    keep = where & np.isfinite(bad_target) & np.all(np.isfinite(bad_ensemble), axis=1)
    expected = _reference(ensemble, target, keep)
    expected["nonfinite"] = 3.0
    _assert_matches(_update(_empty(), bad_ensemble, bad_target, where).compute(), expected)


def test_two_splits_and_merges_agree_with_one_pass():
    ensemble, target = _rain_pair(seed=6)
    one_pass = _update(_empty(), ensemble, target, _ALL)
    split_a = [_update(_empty(), ensemble, target, _examples_between(*b)) for b in ((0, 1), (1, 6))]
    split_b = [
        _update(_empty(), ensemble, target, _examples_between(*b)) for b in ((0, 3), (3, 4), (4, 6))
    ]
    merged_a = _merge(*split_a)
    merged_b = _merge(_merge(split_b[2], split_b[0]), split_b[1])
    stacked = _merge_stacked(jax.tree.map(lambda *x: jnp.stack(x), *split_b))
    # Counts are integers: the discrete state is bit-identical whatever the split.
    for state in (merged_a, merged_b, stacked):
        np.testing.assert_array_equal(state.rank_counts, one_pass.rank_counts)
        np.testing.assert_array_equal(state.brier_counts, one_pass.brier_counts)
        _assert_matches(state.compute(), one_pass.compute(), rtol=1e-6, atol=0)
    _assert_matches(one_pass.compute(), _reference(ensemble, target, _ALL))


def test_climatology_sets_the_brier_reference():
    ensemble, target = _rain_pair(seed=7)
    base_rate = 0.05
    result = _update(_empty(climatology=base_rate), ensemble, target, _ALL).compute()
    _assert_matches(result, _reference(ensemble, target, _ALL, climatology=base_rate))
    sample = _update(_empty(), ensemble, target, _ALL).compute()
    assert result["brier"] == sample["brier"]
    assert result["brier_climatology"] > sample["brier_climatology"]  # p(1-p) is the minimum


def test_jit_matches_eager():
    ensemble, target = _rain_pair(seed=8)
    eager = _empty().update(ensemble, target, _ALL).compute()
    _assert_matches(_update(_empty(), ensemble, target, _ALL).compute(), eager, rtol=1e-6, atol=0)


def _ensemble_update_once_traced(state, ensemble, target):
    return state.update(ensemble, target)


_update_checked = jax.jit(chex.assert_max_traces(_ensemble_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = _empty()
    for seed in range(3):
        state = _update_checked(state, *_rain_pair(seed=seed))
    assert state.compute()["count"] == 3 * np.prod(_FIELD)


def _gather_and_merge(ensemble, target):
    """Per-device update, then every device gathers all states and merges them."""
    local = _empty().update(ensemble, target)
    return merge_stacked(jax.lax.all_gather(local, "devices"))


# One CPU device: vmap with a named axis runs the same all_gather collective as shard_map.
_on_devices = jax.jit(jax.vmap(_gather_and_merge, axis_name="devices"))


def test_data_parallel_shards_merge_to_the_single_pass():
    ensemble, target = _rain_pair(seed=9)
    shards = 3
    gathered = _on_devices(
        ensemble.reshape(shards, -1, *_SHAPE[1:]), target.reshape(shards, -1, *_FIELD[1:])
    )
    expected = _reference(ensemble, target, _ALL)
    for device in range(shards):
        _assert_matches(jax.tree.map(lambda x, d=device: x[d], gathered).compute(), expected)


def test_calibrated_ensemble_has_unit_spread_skill_and_flat_ranks():
    """Members and target drawn from one distribution per element (exchangeable).

    Then E[(xbar - y)^2] = (M + 1)/M E[var(x, ddof=1)], so spread_skill estimates 1. Its
    relative standard error at N Gaussian pairs is about sqrt(M / (2 N (M - 1))): 1/(2N)
    from the mean squared error and 1/(2N(M-1)) from the spread; with N = 20000 and M = 10
    that is 0.0053, and the test allows 5 of them. Each rank share has a standard error of
    at most sqrt(p (1 - p) / N) = 0.002 with p = 1/11 (ties only lower it).
    """
    members, batch, side = 10, 8, 50
    rng = np.random.default_rng(10)
    centre = rng.normal(0.0, 3.0, size=(batch, 1, side, side))
    scale = rng.uniform(0.5, 2.0, size=(batch, 1, side, side))
    draws = (centre + scale * rng.standard_normal((batch, members + 1, side, side))).astype(
        np.float32
    )
    result = EnsembleMetrics.empty(members, 1.0).update(draws[:, 1:], draws[:, 0]).compute()
    n = batch * side * side
    standard_error = math.sqrt(members / (2 * n * (members - 1)))
    assert abs(result["spread_skill"] - 1.0) < 5 * standard_error
    share_error = math.sqrt((1 / 11) * (10 / 11) / n)
    np.testing.assert_allclose(result["rank_histogram"], 1 / (members + 1), atol=5 * share_error)
    assert result["rank_flatness"] < 0.05
    assert result["outside_range"] == pytest.approx(2 / (members + 1), abs=5 * 0.003)
    assert result["reliability"] < 0.01 and result["brier_skill"] > 0.3

    # Dry-heavy rain from one distribution: ties at 0 everywhere, still flat when split evenly.
    rain = _rain(rng, (batch, members + 1, side, side)).astype(np.float32)
    result = EnsembleMetrics.empty(members, 5.0).update(rain[:, 1:], rain[:, 0]).compute()
    np.testing.assert_allclose(result["rank_histogram"], 1 / (members + 1), atol=5 * share_error)


def test_collapsed_ensemble_is_flagged():
    """Members all near one constant: no spread, the target falls in the end bins."""
    _, target = _rain_pair(seed=11)
    noise = np.random.default_rng(12).normal(0.0, 1e-3, size=_SHAPE)
    collapsed = (np.float32(0.8) + noise).astype(np.float32)
    result = _update(_empty(), collapsed, target, _ALL).compute()
    _assert_matches(result, _reference(collapsed, target, _ALL))
    assert result["spread_skill"] < 0.01
    assert result["rank_low"] + result["rank_high"] > 0.95
    assert result["outside_range"] > 0.95
    assert result["rank_flatness"] > 1.0
    # Never above the threshold: p = 0 everywhere, worse than the sample climatology.
    assert result["brier_skill"] < 0.0
    assert result["reliability_counts"][0] == result["count"]


def test_empty_state_gives_nan_and_zero_counts():
    result = _empty().compute()
    assert result["count"] == 0.0 and result["nonfinite"] == 0.0
    for key, value in result.items():
        if key in ("count", "nonfinite"):
            continue
        if key == "reliability_counts":
            assert not np.any(value)
        else:
            assert np.all(np.isnan(value)), key


def test_bad_input_names_the_argument():
    ensemble, target = _rain_pair()
    state = _empty()
    with pytest.raises(ValueError, match=r"EnsembleMetrics.update: `ensemble` has 1 member\(s\)"):
        EnsembleMetrics.empty(2, 1.0).update(ensemble[:, :1], target)
    with pytest.raises(ValueError, match="`ensemble` has 5 members on axis 1"):
        state.update(ensemble[:, :5], target)
    with pytest.raises(
        ValueError,
        match=r"`ensemble` has shape \(6, 6, 8, 8\), so each member is \(6, 8, 8\), "
        r"but `target` has shape \(6, 8, 7\)",
    ):
        state.update(ensemble, target[:, :, :7])
    with pytest.raises(ValueError, match=r"`where` has shape \(8, 8\)"):
        state.update(ensemble, target, np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="EnsembleMetrics.empty: `num_members` must be"):
        EnsembleMetrics.empty(1, 1.0)
    for threshold in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="EnsembleMetrics.empty: `threshold` must be finite"):
            EnsembleMetrics.empty(4, threshold)
    for climatology in (0.0, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="EnsembleMetrics.empty: `climatology` must lie"):
            EnsembleMetrics.empty(4, 1.0, climatology=climatology)
    with pytest.raises(ValueError, match="different `climatology`"):
        state.merge(_empty(climatology=0.1))


_EXPLICIT_SHARDING_SCRIPT = """
import numpy as np, jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jaxguard.metrics import EnsembleMetrics

mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
rng = np.random.default_rng(0)
ensemble = np.where(rng.random((8, 5, 4, 4)) < 0.6, 0, rng.gamma(0.5, 8, (8, 5, 4, 4)))
target = np.where(rng.random((8, 4, 4)) < 0.6, 0, rng.gamma(0.5, 8, (8, 4, 4)))
ensemble, target = ensemble.astype(np.float32), target.astype(np.float32)
state = EnsembleMetrics.empty(5, 5.0)
expected = state.update(ensemble, target).compute()
with jax.set_mesh(mesh):
    sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (ensemble, target)]
    result = jax.jit(EnsembleMetrics.update)(state, *sharded).compute()
for key in expected:
    np.testing.assert_allclose(result[key], expected[key], rtol=1e-6, err_msg=key)
print("sharded ok")
"""


def test_update_on_a_batch_sharded_over_four_devices():
    """Explicit sharding (the strictest mode) on 4 forced host devices, in a fresh process:
    the batch-sharded update compiles and matches the single-device result."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _EXPLICIT_SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
