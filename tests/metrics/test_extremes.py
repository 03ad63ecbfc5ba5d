"""Tests for ExtremeMetrics against float64 NumPy re-derivations."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.metrics import ExtremeMetrics, merge_stacked

_THRESHOLD = 2.0
_update = jax.jit(ExtremeMetrics.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
# Every test feeds this one shape with a per-pixel bool mask: one compilation for all.
_SHAPE = (4, 6, 5)
_ALL = np.ones(_SHAPE, bool)
_FIELD_INDEX = np.arange(_SHAPE[0])[:, None, None]


def _fields_between(lo, hi):
    """Per-pixel mask selecting fields lo..hi-1: a smaller batch without a new shape."""
    return _ALL & (_FIELD_INDEX >= lo) & (_FIELD_INDEX < hi)


def _fields(seed=0):
    """Gamma-distributed 'rain' target with a prediction that under-forecasts the tail."""
    rng = np.random.default_rng(seed)
    target = rng.gamma(0.8, 1.5, size=_SHAPE).astype(np.float32)
    pred = (0.6 * target + 0.3 * rng.random(_SHAPE)).astype(np.float32)
    return pred, target


def _numpy_reference(pred, target, threshold=_THRESHOLD):
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    tail = t > threshold
    error = p - t
    return {
        "mae_all": np.mean(np.abs(error)),
        "mae_tail": np.mean(np.abs(error[tail])) if tail.any() else np.nan,
        "rmse_tail": np.sqrt(np.mean(error[tail] ** 2)) if tail.any() else np.nan,
        "extreme_freq_true": tail.mean(),
        "extreme_freq_pred": np.mean(p > threshold),
        "correlation": np.corrcoef(p, t)[0, 1],
        "count": float(p.size),
        "count_tail": float(tail.sum()),
        "nonfinite": 0.0,
    }


def _assert_matches(result, expected, rtol=1e-5, atol=1e-6):
    assert list(result) == list(expected)
    for key, want in expected.items():
        np.testing.assert_allclose(result[key], want, rtol=rtol, atol=atol, err_msg=key)


def _empty():
    return ExtremeMetrics.empty(threshold=_THRESHOLD)


def test_streamed_fields_match_numpy():
    pred, target = _fields()
    state = _empty()
    for lo, hi in ((0, 1), (1, 4)):
        state = _update(state, pred, target, _fields_between(lo, hi))
    expected = _numpy_reference(pred, target)
    assert expected["count_tail"] > 0
    _assert_matches(state.compute(), expected)


def test_no_tail_pixels_gives_nan_tail_errors():
    pred, target = _fields()
    target = np.minimum(target, np.float32(_THRESHOLD))
    result = _update(_empty(), pred, target, _ALL).compute()
    assert result["count_tail"] == 0.0 and result["extreme_freq_true"] == 0.0
    assert np.isnan(result["mae_tail"]) and np.isnan(result["rmse_tail"])
    assert np.isfinite(result["mae_all"])


def test_per_pixel_mask_excludes_pixels():
    pred, target = _fields(seed=1)
    coverage = np.random.default_rng(2).random(_SHAPE) > 0.3
    # Finite garbage (which only the mask can remove) and NaN outside the coverage.
    garbage = np.where(np.arange(np.prod(_SHAPE)).reshape(_SHAPE) % 2, np.nan, 50.0)
    poisoned = np.where(coverage, target, garbage).astype(np.float32)
    result = _update(_empty(), pred, poisoned, coverage).compute()
    _assert_matches(result, _numpy_reference(pred[coverage], target[coverage]))


def test_nonfinite_pixels_are_counted_and_excluded():
    pred, target = _fields(seed=3)
    bad_pred, bad_target = pred.copy(), target.copy()
    bad_pred[0, 0, 0] = np.nan
    bad_target[1, 2, 3] = np.inf
    bad_target[2, 0, 1] = np.nan
    bad_pred[2, 0, 1] = -np.inf
    keep = np.isfinite(bad_pred) & np.isfinite(bad_target)
    expected = _numpy_reference(pred[keep], target[keep])
    expected["nonfinite"] = 3.0
    _assert_matches(_update(_empty(), bad_pred, bad_target, _ALL).compute(), expected)


def test_jit_matches_eager():
    pred, target = _fields(seed=4)
    eager = _empty().update(pred, target, _ALL).compute()
    _assert_matches(_update(_empty(), pred, target, _ALL).compute(), eager, rtol=1e-6, atol=0)


def _extremes_update_once_traced(state, pred, target):
    return state.update(pred, target)


_update_checked = jax.jit(chex.assert_max_traces(_extremes_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = _empty()
    for seed in range(3):
        state = _update_checked(state, *_fields(seed=seed))
    assert state.compute()["count"] == 3 * np.prod(_SHAPE)


def test_bad_input_names_the_argument():
    state = _empty()
    with pytest.raises(ValueError, match="ExtremeMetrics.update: `pred` has shape"):
        state.update(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="`target` must have at least 1 axes"):
        state.update(np.zeros(3), np.float32(0.0))
    with pytest.raises(ValueError, match="`mask` has shape \\(3, 3\\)"):
        state.update(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="ExtremeMetrics.empty: `threshold`"):
        ExtremeMetrics.empty(threshold=float("nan"))
    with pytest.raises(ValueError, match="different `threshold`"):
        state.merge(ExtremeMetrics.empty(threshold=3.0))


def test_merge_stacked_of_three_states_equals_single_pass():
    pred, target = _fields(seed=5)
    states = [
        _update(_empty(), pred, target, _fields_between(*b)) for b in ((0, 1), (1, 2), (2, 4))
    ]
    merged = _merge_stacked(jax.tree.map(lambda *x: jnp.stack(x), *states))
    _assert_matches(merged.compute(), _numpy_reference(pred, target))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _SHAPE[0]), min_size=2, max_size=2),
)
def test_split_stream_matches_single_pass_and_merge_is_associative(seed, cuts):
    pred, target = _fields(seed=seed)
    bounds = [0, *sorted(cuts), _SHAPE[0]]
    a, b, c = (
        _update(_empty(), pred, target, _fields_between(lo, hi))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    left = _merge(_merge(a, b), c).compute()
    right = _merge(a, _merge(b, c)).compute()
    _assert_matches(left, right)
    _assert_matches(left, _numpy_reference(pred, target))
