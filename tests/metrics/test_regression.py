"""Tests for RegressionMetrics against scikit-learn and float64 NumPy."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxguard.metrics import RegressionMetrics, merge_stacked

# Module-level jitted functions, always called with a float32 mask so that every test with
# the same batch size reuses one compilation.
_update = jax.jit(RegressionMetrics.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
_SIZES = (7, 1, 30, 13)
_KEYS = (
    "r2 mae mse rmse mape bias pred_mean pred_std target_mean target_std std_ratio "
    "variance_ratio spread target_spread pearson count nonfinite"
).split()


def _ones(shape):
    return np.ones(shape, np.float32)


def _stream(pred, target, sizes=_SIZES, mask=None):
    """Feeds pred/target in consecutive batches of the given (uneven) sizes."""
    mask = _ones(pred.shape[0]) if mask is None else mask
    state = RegressionMetrics.empty()
    start = 0
    for size in sizes:
        chunk = slice(start, start + size)
        state = _update(state, pred[chunk], target[chunk], mask[chunk])
        start += size
    return state


def _normal_data(seed=0, n=51):
    rng = np.random.default_rng(seed)
    target = (2.0 + 1.5 * rng.standard_normal(n)).astype(np.float32)
    pred = (0.8 * target + 0.7 * rng.standard_normal(n)).astype(np.float32)
    return pred, target


def _offset_data(seed=0, n=51):
    rng = np.random.default_rng(seed)
    target = (1e4 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    pred = (target + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return pred, target


def _numpy_reference(pred, target):
    """Every key re-derived in float64 NumPy (sklearn where it has the metric)."""
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    return {
        "r2": skm.r2_score(t, p),
        "mae": skm.mean_absolute_error(t, p),
        "mse": skm.mean_squared_error(t, p),
        "rmse": np.sqrt(skm.mean_squared_error(t, p)),
        "mape": skm.mean_absolute_percentage_error(t, p),
        "bias": np.mean(p - t),
        "pred_mean": p.mean(),
        "pred_std": p.std(),
        "target_mean": t.mean(),
        "target_std": t.std(),
        "std_ratio": p.std() / t.std(),
        "variance_ratio": p.var() / t.var(),
        "spread": np.ptp(p),
        "target_spread": np.ptp(t),
        "pearson": np.corrcoef(p, t)[0, 1],
        "count": float(p.size),
        "nonfinite": 0.0,
    }


def _assert_matches(result, expected, rtol=1e-5, atol=1e-6):
    for key, want in expected.items():
        np.testing.assert_allclose(result[key], want, rtol=rtol, atol=atol, err_msg=key)


def test_keys_are_exactly_the_documented_ones():
    pred, target = _normal_data()
    assert list(_stream(pred, target).compute()) == _KEYS


@pytest.mark.parametrize("data", [_normal_data, _offset_data], ids=["normal", "offset_1e4"])
def test_uneven_batches_match_sklearn_and_numpy(data):
    pred, target = data()
    _assert_matches(_stream(pred, target).compute(), _numpy_reference(pred, target))


def test_naive_float32_r2_is_wrong_on_offset_data_and_ours_is_right():
    # The precision bug of CLU's Std / metrax's R^2 / torchmetrics' R2Score: SST from
    # sum(t^2) - sum(t)^2 / n accumulated in float32.
    pred, target = _offset_data()
    sums = {"t": np.float32(0), "t2": np.float32(0), "sse": np.float32(0)}
    bounds = np.cumsum((0, *_SIZES))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        t, p = target[lo:hi], pred[lo:hi]
        sums["t"] += np.sum(t, dtype=np.float32)
        sums["t2"] += np.sum(t * t, dtype=np.float32)
        sums["sse"] += np.sum((p - t) ** 2, dtype=np.float32)
    n = np.float32(target.size)
    naive_r2 = 1 - sums["sse"] / (sums["t2"] - sums["t"] ** 2 / n)
    expected = skm.r2_score(target.astype(np.float64), pred.astype(np.float64))
    assert abs(naive_r2 - expected) > 0.1
    assert abs(_stream(pred, target).compute()["r2"] - expected) < 1e-5


def test_rank_2_inputs_pool_all_elements():
    rng = np.random.default_rng(3)
    target = rng.standard_normal((10, 3)).astype(np.float32)
    pred = (target + 0.3 * rng.standard_normal((10, 3))).astype(np.float32)
    state = _update(RegressionMetrics.empty(), pred, target, _ones(10))
    _assert_matches(state.compute(), _numpy_reference(pred, target))


def test_std_ratio_and_variance_ratio_are_named_honestly():
    rng = np.random.default_rng(4)
    target = rng.standard_normal(30).astype(np.float32)
    collapsed = (target.mean() + 0.034 * (target - target.mean())).astype(np.float32)
    result = _stream(collapsed, target, (30,)).compute()
    np.testing.assert_allclose(result["std_ratio"], 0.034, rtol=1e-4)
    np.testing.assert_allclose(result["variance_ratio"], 0.034**2, rtol=1e-4)


def test_constant_target_gives_nan_r2_and_ratios():
    pred = np.linspace(0, 1, 30, dtype=np.float32)
    result = _stream(pred, np.full(30, 3.0, np.float32), (30,)).compute()
    assert result["target_std"] == 0.0
    for key in ("r2", "std_ratio", "variance_ratio", "pearson"):
        assert np.isnan(result[key]), key
    np.testing.assert_allclose(result["mae"], np.mean(np.abs(pred - 3.0)), rtol=1e-6)


def test_empty_state_is_nan_with_zero_counts():
    result = RegressionMetrics.empty().compute()
    assert result["count"] == 0.0 and result["nonfinite"] == 0.0
    assert all(np.isnan(v) for k, v in result.items() if k not in ("count", "nonfinite"))


def test_masked_out_elements_do_not_change_the_result():
    pred, target = _normal_data()
    keep = np.arange(51) % 4 != 1
    # Finite garbage (which only the mask can remove) in pred, NaN in target.
    garbage_pred = np.where(keep, pred, np.float32(1e6))
    garbage_target = np.where(keep | (np.arange(51) % 8 == 5), target, np.nan).astype(np.float32)
    result = _stream(garbage_pred, garbage_target, mask=keep.astype(np.float32)).compute()
    _assert_matches(result, _numpy_reference(pred[keep], target[keep]))


def test_per_example_mask_broadcasts_over_trailing_axes():
    rng = np.random.default_rng(5)
    pred, target = rng.standard_normal((2, 10, 3)).astype(np.float32)
    keep = np.arange(10) < 6
    result = _update(RegressionMetrics.empty(), pred, target, keep.astype(np.float32)).compute()
    _assert_matches(result, _numpy_reference(pred[keep], target[keep]))


def test_nonfinite_inputs_are_counted_and_excluded():
    pred, target = _normal_data()
    bad_pred, bad_target = pred.copy(), target.copy()
    bad_pred[[0, 20]] = [np.nan, np.inf]
    bad_target[[20, 40, 45]] = [np.nan, -np.inf, np.nan]
    keep = np.ones(51, bool)
    keep[[0, 20, 40, 45]] = False
    result = _stream(bad_pred, bad_target).compute()
    expected = _numpy_reference(pred[keep], target[keep])
    expected["nonfinite"] = 4.0
    _assert_matches(result, expected)


def test_jit_matches_eager():
    pred, target = _normal_data(n=7)
    mask = np.arange(7, dtype=np.float32) % 3
    eager = RegressionMetrics.empty().update(pred, target, mask).compute()
    jitted = _update(RegressionMetrics.empty(), pred, target, mask).compute()
    assert eager["count"] == 4.0
    _assert_matches(jitted, eager, rtol=1e-6, atol=0)


def _regression_update_once_traced(state, pred, target):
    return state.update(pred, target)


_update_checked = jax.jit(chex.assert_max_traces(_regression_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = RegressionMetrics.empty()
    for seed in range(3):
        state = _update_checked(state, *_normal_data(seed=seed, n=8))
    assert state.compute()["count"] == 24.0


@pytest.mark.parametrize(
    ("pred", "target", "mask", "match"),
    [
        (np.zeros(3), np.zeros(4), None, "`pred` has shape \\(3,\\) but `target`"),
        (np.zeros((3, 2)), np.zeros((3, 3)), None, "`pred` has shape \\(3, 2\\)"),
        (np.float32(1.0), np.float32(1.0), None, "`pred` must have at least 1 axes"),
        (np.zeros(3), np.float32(1.0), None, "`target` must have at least 1 axes"),
        (np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2), "`mask` has shape \\(2,\\)"),
    ],
)
def test_bad_input_names_the_argument(pred, target, mask, match):
    with pytest.raises(ValueError, match="RegressionMetrics.update: " + match):
        RegressionMetrics.empty().update(pred, target, mask)


def test_merge_stacked_of_three_states_equals_single_pass():
    pred, target = _normal_data()
    states = [_stream(pred[a:b], target[a:b], (b - a,)) for a, b in ((0, 7), (7, 8), (8, 38))]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    merged = _merge_stacked(stacked).compute()
    _assert_matches(merged, _numpy_reference(pred[:38], target[:38]))


# Same size as one of _SIZES, so the hypothesis examples reuse that compilation.
_HYPOTHESIS_SIZE = 30


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _HYPOTHESIS_SIZE), min_size=2, max_size=2),
    offset=st.sampled_from([0.0, 1e4]),
)
def test_split_stream_matches_single_pass_and_merge_is_associative(seed, cuts, offset):
    pred, target = _normal_data(seed=seed, n=_HYPOTHESIS_SIZE)
    pred, target = pred + np.float32(offset), target + np.float32(offset)
    index = np.arange(_HYPOTHESIS_SIZE)
    bounds = [0, *sorted(cuts), _HYPOTHESIS_SIZE]
    # Segments as masks over one fixed-shape batch: a split stream with a single compile.
    a, b, c = (
        _update(
            RegressionMetrics.empty(),
            pred,
            target,
            _ones(_HYPOTHESIS_SIZE) * (index >= lo) * (index < hi),
        )
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    left = _merge(_merge(a, b), c).compute()
    right = _merge(a, _merge(b, c)).compute()
    single = _update(RegressionMetrics.empty(), pred, target, _ones(_HYPOTHESIS_SIZE)).compute()
    _assert_matches(left, right, rtol=1e-5, atol=1e-6)
    _assert_matches(left, single, rtol=1e-4, atol=1e-5)
