"""Tests for Histogram against numpy.histogram and numpy.quantile."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.metrics import Histogram, merge_stacked

_LO, _HI, _BINS = -2.0, 3.0, 20
_WIDTH = (_HI - _LO) / _BINS
_update = jax.jit(Histogram.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
# Every test feeds this one shape with a bool mask: one compilation for all.
_SIZE = 400
_ALL = np.ones(_SIZE, bool)


def _empty():
    return Histogram.empty(_LO, _HI, _BINS)


def _histogram_of(values):
    """The histogram of up to _SIZE values via the one compiled update (padding masked out)."""
    padded = np.zeros(_SIZE, np.float32)
    padded[: len(values)] = values
    return _update(_empty(), padded, np.arange(_SIZE) < len(values))


def _values(seed=0):
    return np.random.default_rng(seed).normal(0.5, 1.2, _SIZE).astype(np.float32)


def _assert_counts_match_numpy(result, values):
    in_range = values[(values >= _LO) & (values <= _HI)]
    expected, edges = np.histogram(in_range, bins=_BINS, range=(_LO, _HI))
    assert result["counts"] == expected.tolist()
    np.testing.assert_allclose(result["edges"], edges)
    assert result["underflow"] == np.sum(values < _LO)
    assert result["overflow"] == np.sum(values > _HI)
    assert result["count"] == values.size


def test_counts_match_numpy_histogram():
    values = _values()
    assert (values < _LO).any() and (values > _HI).any()
    _assert_counts_match_numpy(_update(_empty(), values, _ALL).compute(), values)


def test_edge_values_go_to_the_documented_bins():
    values = np.array([_LO, _HI, _LO + _WIDTH, _HI + 1e-3, _LO - 1e-3], np.float32)
    result = _histogram_of(values).compute()
    assert result["counts"][0] == 1 and result["counts"][1] == 1
    assert result["counts"][-1] == 1, "a value equal to hi belongs in the last bin"
    assert result["underflow"] == 1.0 and result["overflow"] == 1.0


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.97, 1.0])
def test_quantile_within_one_bin_width_of_numpy_on_dense_data(q):
    values = np.clip(_values(seed=1), _LO, _HI)
    state = _update(_empty(), values, _ALL)
    assert abs(state.quantile(q) - np.quantile(values, q)) <= _WIDTH
    assert abs(state.quantile(q) - np.quantile(values, q, method="inverted_cdf")) <= _WIDTH


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    size=st.integers(1, _SIZE),
    q=st.floats(0.0, 1.0),
)
def test_quantile_within_one_bin_width_of_inverted_cdf_for_any_data(seed, size, q):
    # Sparse data included: the estimate shares a bin with NumPy's inverted-CDF quantile.
    rng = np.random.default_rng(seed)
    values = rng.uniform(_LO, _HI, _SIZE) ** rng.integers(1, 4)
    values = np.clip(values, _LO, _HI).astype(np.float32)
    state = _update(_empty(), values, np.arange(_SIZE) < size)
    expected = np.quantile(values[:size], q, method="inverted_cdf")
    # Why the 1e-5 slack: float32 rounding may bin a value sitting on an edge next door.
    assert abs(state.quantile(q) - expected) <= _WIDTH * (1 + 1e-5)


def test_quantile_in_underflow_or_overflow_reports_the_range_end():
    values = np.array([-5.0, -4.0, 0.0, 9.0, 9.5, 10.0], np.float32)
    state = _histogram_of(values)
    assert state.quantile(0.1) == _LO
    assert state.quantile(0.9) == _HI
    assert np.isnan(_empty().quantile(0.5))


def test_masked_and_nonfinite_values_are_excluded():
    values = _values(seed=2)
    keep = np.arange(_SIZE) % 3 != 0
    # Finite garbage (which only the mask can remove) and NaN/Inf where the mask is off.
    garbage = np.where(np.arange(_SIZE) % 2, np.inf, 0.0)
    garbage[:6:3] = np.nan
    poisoned = np.where(keep, values, garbage).astype(np.float32)
    masked = _update(_empty(), poisoned, keep).compute()
    _assert_counts_match_numpy(masked, values[keep])
    assert masked["nonfinite"] == 0.0
    nonfinite = ~np.isfinite(poisoned)
    unmasked = _update(_empty(), poisoned, _ALL).compute()
    _assert_counts_match_numpy(unmasked, poisoned[~nonfinite])
    assert unmasked["nonfinite"] == float(nonfinite.sum()) > 0


def test_jit_matches_eager():
    values = _values(seed=3)
    keep = np.arange(_SIZE) % 2 == 0
    assert _empty().update(values, keep).compute() == _update(_empty(), values, keep).compute()


def _histogram_update_once_traced(state, values):
    return state.update(values)


_update_checked = jax.jit(chex.assert_max_traces(_histogram_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = _empty()
    for seed in range(3):
        state = _update_checked(state, _values(seed=seed))
    assert state.compute()["count"] == 3 * _SIZE


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Histogram.empty: `lo` and `hi`"):
        Histogram.empty(1.0, 1.0, 4)
    with pytest.raises(ValueError, match="Histogram.empty: `bins`"):
        Histogram.empty(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="Histogram.update: `values` must have at least 1"):
        _empty().update(np.float32(1.0))
    with pytest.raises(ValueError, match="Histogram.update: `mask` has shape"):
        _empty().update(np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match="Histogram.quantile: `q`"):
        _empty().quantile(1.5)
    with pytest.raises(ValueError, match="Histogram.merge: cannot merge .* different `bins`"):
        _empty().merge(Histogram.empty(_LO, _HI, _BINS + 1))


def test_merge_stacked_of_three_states_equals_single_pass():
    values = _values(seed=4)
    thirds = np.array_split(np.arange(_SIZE), 3)
    states = [_update(_empty(), values, np.isin(np.arange(_SIZE), part)) for part in thirds]
    merged = _merge_stacked(jax.tree.map(lambda *x: jnp.stack(x), *states))
    assert merged.compute() == _update(_empty(), values, _ALL).compute()


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _SIZE), min_size=2, max_size=2),
)
def test_split_stream_matches_single_pass_and_merge_is_associative(seed, cuts):
    values = _values(seed=seed)
    index = np.arange(_SIZE)
    bounds = [0, *sorted(cuts), _SIZE]
    a, b, c = (
        _update(_empty(), values, (index >= lo) & (index < hi))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    left = _merge(_merge(a, b), c).compute()
    assert left == _merge(a, _merge(b, c)).compute()
    _assert_counts_match_numpy(left, values)
