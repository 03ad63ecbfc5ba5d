"""Tests for the exact streaming moments and the shared metric plumbing."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.metrics import Moments, RegressionMetrics, merge_stacked
from jaxguard.metrics._moments import inclusion_mask

_from_batch = jax.jit(Moments.from_batch)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
_SIZES = (7, 1, 30, 13)


def _stream(values, sizes=_SIZES):
    """Moments of `values` [n, k] fed in consecutive batches of the given sizes."""
    state = Moments.empty(values.shape[1])
    start = 0
    for size in sizes:
        chunk = values[start : start + size]
        state = _merge(state, _from_batch(chunk, np.ones(size, bool)))
        start += size
    return state


def _reference(values):
    """float64 NumPy means, population variances and correlation of `values` [n, 2]."""
    values = np.asarray(values, np.float64)
    return values.mean(0), values.var(0), np.corrcoef(values.T)[0, 1]


def _offset_data(n=51, seed=0):
    """A target of 1e4 +- 0.1 and a prediction 0.05 off it, in float32."""
    rng = np.random.default_rng(seed)
    target = (1e4 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    pred = (target + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return np.stack([pred, target], axis=1)


def test_single_batch_matches_float64_numpy():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((30, 2)) * [2.0, 0.5] + [3.0, -1.0]).astype(np.float32)
    include = rng.random(30) > 0.3
    state = _from_batch(values, include)
    mean, var, corr = _reference(values[include])
    assert int(state.count) == include.sum()
    np.testing.assert_allclose(state.means(), mean, rtol=1e-6)
    np.testing.assert_allclose(state.variances(), var, rtol=1e-5)
    np.testing.assert_allclose(state.correlation(), corr, rtol=1e-5)


def test_uneven_batches_with_large_offset_keep_float32_precision():
    values = _offset_data()
    state = _stream(values)
    mean, var, corr = _reference(values)
    # The stored mean is shift + offset, so it is even finer than one float32 ulp at 1e4.
    np.testing.assert_allclose(state.means(), mean, rtol=1e-9)
    np.testing.assert_allclose(state.variances(), var, rtol=1e-5)
    np.testing.assert_allclose(state.correlation(), corr, rtol=1e-5)


def test_naive_float32_formula_fails_where_moments_pass():
    target = _offset_data()[:, 1]
    naive_sum, naive_sum_sq = np.float32(0), np.float32(0)
    for x in target:
        naive_sum += x
        naive_sum_sq += x * x
    n = np.float32(len(target))
    naive_var = naive_sum_sq / n - (naive_sum / n) ** 2
    true_var = np.var(target.astype(np.float64))
    assert abs(naive_var - true_var) > 10 * true_var
    np.testing.assert_allclose(_stream(_offset_data()).variances()[1], true_var, rtol=1e-5)


def test_empty_states_merge_without_nan():
    values = _offset_data(n=9)
    state = _from_batch(values, np.ones(9, bool))
    empty = Moments.empty(2)
    for merged in (_merge(empty, state), _merge(state, empty)):
        for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(got, want)
    both = _merge(empty, _from_batch(values, np.zeros(9, bool)))
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(both))
    assert np.all(np.isnan(both.means())) and np.all(np.isnan(both.variances()))
    assert np.isnan(both.correlation())


def test_excluded_rows_may_hold_nan_and_inf():
    values = _offset_data(n=12)
    include = np.arange(12) % 3 != 0
    poisoned = values.copy()
    poisoned[~include] = [np.nan, np.inf]
    state = _from_batch(poisoned, include)
    mean, var, _ = _reference(values[include])
    np.testing.assert_allclose(state.means(), mean, rtol=1e-9)
    np.testing.assert_allclose(state.variances(), var, rtol=1e-5)


def test_constant_variable_has_nan_correlation():
    values = np.stack([np.arange(5.0), np.full(5, 2.0)], axis=1).astype(np.float32)
    state = _from_batch(values, np.ones(5, bool))
    assert state.variances()[1] == 0.0
    assert np.isnan(state.correlation())


def _stack(states):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def test_merge_stacked_of_three_states_equals_single_pass():
    values = _offset_data(n=38)
    states = [_stream(values[a:b], (b - a,)) for a, b in ((0, 7), (7, 8), (8, 38))]
    merged = _merge_stacked(_stack(states))
    single = _stream(values[:38], (38,))
    assert int(merged.count) == 38
    np.testing.assert_allclose(merged.means(), single.means(), rtol=1e-9)
    np.testing.assert_allclose(merged.variances(), single.variances(), rtol=1e-5)


def _gather_and_merge(pred, target):
    """Per-device update, then every device gathers all states and merges them."""
    local = RegressionMetrics.empty().update(pred, target)
    return merge_stacked(jax.lax.all_gather(local, "devices"))


# One CPU device: vmap with a named axis runs the same all_gather collective as shard_map.
_on_devices = jax.jit(jax.vmap(_gather_and_merge, axis_name="devices"))


def test_merge_stacked_after_all_gather():
    rng = np.random.default_rng(2)
    pred, target = rng.standard_normal((2, 3, 5)).astype(np.float32)
    gathered = _on_devices(pred, target)
    p, t = pred.ravel().astype(np.float64), target.ravel().astype(np.float64)
    expected = {
        "count": 15.0,
        "r2": 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2),
        "pred_mean": p.mean(),
        "target_std": t.std(),
        "pearson": np.corrcoef(p, t)[0, 1],
    }
    for device in range(3):
        merged = jax.tree.map(lambda x, d=device: x[d], gathered).compute()
        for key, want in expected.items():
            np.testing.assert_allclose(merged[key], want, rtol=1e-5, err_msg=key)


def test_merge_stacked_edge_sizes():
    state = _from_batch(_offset_data(n=4), np.ones(4, bool))
    one = merge_stacked(_stack([state]))
    np.testing.assert_array_equal(one.comoment, state.comoment)
    with pytest.raises(ValueError, match="`stacked`"):
        merge_stacked(jax.tree.map(lambda x: x[:0], _stack([state])))


def test_inclusion_mask_shapes_and_errors():
    per_example = inclusion_mask("f", np.array([1.0, 0.0]), (2, 3))
    np.testing.assert_array_equal(per_example, [[True] * 3, [False] * 3])
    with pytest.raises(ValueError, match="f: `mask` has shape \\(3,\\)"):
        inclusion_mask("f", np.ones(3), (2, 3))
    with pytest.raises(ValueError, match="f: `mask` must be finite and >= 0"):
        inclusion_mask("f", np.array([1.0, -1.0]), (2,))


def test_from_batch_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Moments.from_batch: `values` must have rank 2"):
        Moments.from_batch(np.zeros(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="Moments.from_batch: `include` has 2 rows"):
        Moments.from_batch(np.zeros((3, 2)), np.ones(2, bool))


def test_jit_matches_eager():
    values = _offset_data(n=7)
    include = np.arange(7) % 4 != 0
    eager = Moments.empty(2).merge(Moments.from_batch(values, include))
    jitted = _merge(Moments.empty(2), _from_batch(values, include))
    # The split of the mean into shift + offset may differ by an ulp; the moments may not.
    assert int(jitted.count) == int(eager.count)
    np.testing.assert_allclose(jitted.means(), eager.means(), rtol=1e-9)
    np.testing.assert_allclose(jitted.comoment, eager.comoment, rtol=1e-5)


_HYPOTHESIS_SIZE = 24


def _segment_states(seed, cuts):
    """Moments of three consecutive segments of one fixed-shape array (masks, one compile)."""
    values = _offset_data(n=_HYPOTHESIS_SIZE, seed=seed)
    index = np.arange(_HYPOTHESIS_SIZE)
    bounds = [0, *sorted(cuts), _HYPOTHESIS_SIZE]
    states = [
        _from_batch(values, (index >= lo) & (index < hi))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return values, states


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _HYPOTHESIS_SIZE), min_size=2, max_size=2),
)
def test_merge_is_associative_and_split_matches_single_pass(seed, cuts):
    values, (a, b, c) = _segment_states(seed, cuts)
    left = _merge(_merge(a, b), c)
    right = _merge(a, _merge(b, c))
    mean, var, _ = _reference(values)
    for state in (left, right):
        assert int(state.count) == _HYPOTHESIS_SIZE
        np.testing.assert_allclose(state.means(), mean, rtol=1e-9)
        np.testing.assert_allclose(state.variances(), var, rtol=1e-4)
    np.testing.assert_allclose(left.variances(), right.variances(), rtol=1e-5)
