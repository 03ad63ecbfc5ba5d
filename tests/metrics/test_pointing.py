"""Tests for PointingMetrics against float64 NumPy and scikit-learn."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxguard.metrics import PointingMetrics, merge_stacked

_HEIGHT, _WIDTH = 48, 64
_MAX_ERROR, _BINS = 40.0, 80
_BIN_WIDTH = _MAX_ERROR / _BINS
_BATCH = 64
_update = jax.jit(PointingMetrics.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
_ALL = np.ones(_BATCH, bool)


def _empty():
    return PointingMetrics.empty((_HEIGHT, _WIDTH), max_error_px=_MAX_ERROR, bins=_BINS)


def _episodes(seed=0, batch=_BATCH, done_rate=0.3):
    rng = np.random.default_rng(seed)
    target_xy = rng.random((batch, 2)).astype(np.float32)
    noise = rng.normal(0, 0.08, (batch, 2))
    pred_xy = np.clip(target_xy + noise, 0, 1).astype(np.float32)
    done_true = (rng.random(batch) < done_rate).astype(np.float32)
    done_prob = np.clip(0.5 * done_true + 0.6 * rng.random(batch), 0, 1).astype(np.float32)
    # Final steps have no next object; their coordinates are placeholders.
    target_xy[done_true == 1] = np.nan
    return pred_xy, target_xy, done_prob, done_true


def _pixel_errors(pred_xy, target_xy):
    delta = (pred_xy - target_xy).astype(np.float64)
    return np.hypot(delta[:, 0] * _WIDTH, delta[:, 1] * _HEIGHT)


def _reference(pred_xy, target_xy, done_prob, done_true):
    """float64 NumPy / sklearn values.

    The quantiles are NumPy's inverted-CDF ones, which share a bin with the histogram
    estimate for any data (NumPy's default linear method can be further off in sparse tails).
    """
    pointing = done_true == 0
    errors = _pixel_errors(pred_xy[pointing], target_xy[pointing])
    predicted = done_prob > 0.5
    truth = done_true == 1
    return errors, {
        "pixel_error_mean": errors.mean(),
        "pixel_error_median": np.quantile(errors, 0.5, method="inverted_cdf"),
        "pixel_error_p90": np.quantile(errors, 0.9, method="inverted_cdf"),
        "pixel_error_count": float(pointing.sum()),
        "done_precision": skm.precision_score(truth, predicted),
        "done_recall": skm.recall_score(truth, predicted),
        "done_f1": skm.f1_score(truth, predicted),
        "done_prob_mean": np.mean(done_prob, dtype=np.float64),
        "done_prob_std": np.std(done_prob, dtype=np.float64),
        "done_positive_rate": predicted.mean(),
        "done_true_rate": truth.mean(),
        "count": float(done_true.size),
        "nonfinite": 0.0,
    }


def _assert_matches(result, expected):
    assert list(result) == list(expected)
    for key, want in expected.items():
        # The histogram quantiles are accurate to one bin width (slack for float32 binning).
        quantile = key in ("pixel_error_median", "pixel_error_p90")
        tolerance = {"atol": _BIN_WIDTH * (1 + 1e-5)} if quantile else {}
        np.testing.assert_allclose(result[key], want, rtol=1e-5, err_msg=key, **tolerance)


def test_streamed_episodes_match_numpy_and_sklearn():
    data = _episodes()
    index = np.arange(_BATCH)
    state = _empty()
    for lo, hi in ((0, 10), (10, 64)):
        state = _update(state, *data, (index >= lo) & (index < hi))
    errors, expected = _reference(*data)
    assert errors.max() < _MAX_ERROR
    _assert_matches(state.compute(), expected)


def test_errors_beyond_max_error_report_max_error_for_high_quantiles():
    pred_xy, target_xy, done_prob, done_true = _episodes(seed=1)
    far = np.where(np.arange(_BATCH)[:, None] % 2 == 0, 1.0 - pred_xy, pred_xy)
    result = _update(_empty(), far.astype(np.float32), target_xy, done_prob, done_true, _ALL)
    errors, _ = _reference(far, target_xy, done_prob, done_true)
    assert np.quantile(errors, 0.9) > _MAX_ERROR
    assert result.compute()["pixel_error_p90"] == _MAX_ERROR
    np.testing.assert_allclose(result.compute()["pixel_error_mean"], errors.mean(), rtol=1e-5)


def test_pixel_error_uses_width_for_x_and_height_for_y():
    pred_xy, target_xy, done_prob, done_true = (np.zeros_like(a) for a in _episodes())
    pred_xy[:2] = [[0.5, 0.5], [0.5, 0.75]]
    target_xy[:2] = [[0.25, 0.5], [0.5, 0.5]]
    first_two = np.arange(_BATCH) < 2
    state = _update(_empty(), pred_xy, target_xy, done_prob, done_true, first_two)
    # dx = 0.25 * 64 = 16 px; dy = 0.25 * 48 = 12 px.
    assert state.compute()["pixel_error_mean"] == pytest.approx(14.0)


def test_dense_errors_quantiles_within_one_bin_width_of_numpy_linear():
    pred_xy, target_xy, done_prob, done_true = _episodes(seed=7, batch=4 * _BATCH, done_rate=0)
    state = _empty()
    for part in range(4):
        rows = slice(part * _BATCH, (part + 1) * _BATCH)
        state = _update(
            state, pred_xy[rows], target_xy[rows], done_prob[rows], done_true[rows], _ALL
        )
    errors = _pixel_errors(pred_xy, target_xy)
    result = state.compute()
    assert abs(result["pixel_error_median"] - np.median(errors)) <= _BIN_WIDTH
    assert abs(result["pixel_error_p90"] - np.quantile(errors, 0.9)) <= _BIN_WIDTH


def test_nonfinite_examples_are_counted_and_excluded():
    pred_xy, target_xy, done_prob, done_true = _episodes(seed=2)
    pointing_rows = np.flatnonzero(done_true == 0)
    bad_pred = pred_xy.copy()
    bad_pred[pointing_rows[0], 1] = np.nan
    bad_prob = done_prob.copy()
    bad_prob[pointing_rows[1]] = np.inf
    keep = np.ones(_BATCH, bool)
    keep[pointing_rows[:2]] = False
    result = _update(_empty(), bad_pred, target_xy, bad_prob, done_true, _ALL).compute()
    _, expected = _reference(pred_xy[keep], target_xy[keep], done_prob[keep], done_true[keep])
    expected["nonfinite"] = 2.0
    # The NaN target placeholders of done examples are not counted as non-finite.
    _assert_matches(result, expected)


def test_masked_examples_do_not_change_the_result():
    pred_xy, target_xy, done_prob, done_true = _episodes(seed=3)
    keep = np.arange(_BATCH) % 5 != 0
    # Finite garbage (which only the mask can remove) and NaN in masked-out examples.
    garbage_xy = np.where(keep[:, None], pred_xy, 0.99).astype(np.float32)
    garbage_prob = np.where(keep | (np.arange(_BATCH) % 2 == 0), done_prob, np.nan)
    garbage_prob = garbage_prob.astype(np.float32)
    result = _update(_empty(), garbage_xy, target_xy, garbage_prob, done_true, keep).compute()
    _, expected = _reference(pred_xy[keep], target_xy[keep], done_prob[keep], done_true[keep])
    _assert_matches(result, expected)


def test_undefined_done_scores_are_nan():
    pred_xy, target_xy, done_prob, _ = _episodes(seed=4)
    never_done = np.zeros(_BATCH, np.float32)
    result = _update(_empty(), pred_xy, pred_xy, done_prob * 0, never_done, _ALL).compute()
    for key in ("done_precision", "done_recall", "done_f1"):
        assert np.isnan(result[key]), key
    assert result["done_prob_std"] == 0.0 and result["pixel_error_median"] < _BIN_WIDTH


def test_jit_matches_eager():
    data = _episodes(seed=5)
    eager = _empty().update(*data, _ALL).compute()
    _assert_matches(_update(_empty(), *data, _ALL).compute(), eager)


def _pointing_update_once_traced(state, pred_xy, target_xy, done_prob, done_true):
    return state.update(pred_xy, target_xy, done_prob, done_true)


_update_checked = jax.jit(chex.assert_max_traces(_pointing_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = _empty()
    for seed in range(3):
        state = _update_checked(state, *_episodes(seed=seed))
    assert state.compute()["count"] == 3 * _BATCH


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((4,), (4,), (4,), (4,)), "`pred_xy` must have rank 2"),
        (((4, 3), (4, 3), (4,), (4,)), "`pred_xy` must end in an axis of size 2"),
        (((4, 2), (5, 2), (4,), (4,)), "`pred_xy` has shape \\(4, 2\\) but `target_xy`"),
        (((4, 2), (4, 2), (4, 1), (4, 1)), "`done_prob` must have rank 1"),
        (((4, 2), (4, 2), (4,), (3,)), "`done_prob` has shape \\(4,\\) but `done_true`"),
        (((4, 2), (4, 2), (3,), (3,)), "`done_prob` has 3 examples but `pred_xy` has 4"),
    ],
)
def test_bad_input_names_the_argument(shapes, match):
    arrays = [np.zeros(shape, np.float32) for shape in shapes]
    with pytest.raises(ValueError, match="PointingMetrics.update: " + match):
        _empty().update(*arrays)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="PointingMetrics.empty: `image_size\\[1\\] \\(width\\)`"):
        PointingMetrics.empty((32, 0))
    with pytest.raises(ValueError, match="different `image_size`"):
        _empty().merge(PointingMetrics.empty((_WIDTH, _HEIGHT), _MAX_ERROR, _BINS))
    default = PointingMetrics.empty((30, 40))
    assert default.pixel_errors.hi == 50.0, "defaults to the image diagonal"


def test_merge_stacked_of_three_states_equals_single_pass():
    data = _episodes(seed=6)
    index = np.arange(_BATCH)
    states = [
        _update(_empty(), *data, (index >= lo) & (index < hi))
        for lo, hi in ((0, 5), (5, 6), (6, 64))
    ]
    merged = _merge_stacked(jax.tree.map(lambda *x: jnp.stack(x), *states))
    assert merged.compute() == pytest.approx(_update(_empty(), *data, _ALL).compute(), rel=1e-6)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _BATCH), min_size=2, max_size=2),
)
def test_split_stream_matches_single_pass_and_merge_is_associative(seed, cuts):
    data = _episodes(seed=seed)
    index = np.arange(_BATCH)
    bounds = [0, *sorted(cuts), _BATCH]
    a, b, c = (
        _update(_empty(), *data, (index >= lo) & (index < hi))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    left = _merge(_merge(a, b), c).compute()
    assert left == pytest.approx(_merge(a, _merge(b, c)).compute(), rel=1e-6, nan_ok=True)
    _, expected = _reference(*data)
    _assert_matches(left, expected)
