"""Tests for SegmentationMetrics against scikit-learn and float64 NumPy."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxguard.metrics import SegmentationMetrics, merge_stacked

_update = jax.jit(SegmentationMetrics.update)
_merge = jax.jit(lambda a, b: a.merge(b))
_merge_stacked = jax.jit(merge_stacked)
# Every test feeds this one shape with a per-voxel bool mask: one compilation for all.
_SHAPE = (4, 6, 6)
_ALL = np.ones(_SHAPE, bool)


def _volumes(seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(_SHAPE) < 0.3).astype(np.int32)
    probs = np.clip(0.55 * labels + 0.6 * rng.random(_SHAPE), 0, 1).astype(np.float32)
    return probs, labels


def _reference(probs, labels, threshold=0.5):
    """sklearn on the flattened voxels (dice is the binary F1, IoU the Jaccard index)."""
    predicted = np.ravel(probs) > threshold
    truth = np.ravel(labels) >= 0.5
    return {
        "dice": skm.f1_score(truth, predicted),
        "iou": skm.jaccard_score(truth, predicted),
        "precision": skm.precision_score(truth, predicted),
        "recall": skm.recall_score(truth, predicted),
        "fg_fraction_pred": predicted.mean(),
        "fg_fraction_true": truth.mean(),
        "count": float(predicted.size),
        "nonfinite": 0.0,
    }


def _assert_matches(result, expected):
    assert list(result) == list(expected)
    for key, want in expected.items():
        np.testing.assert_allclose(result[key], want, rtol=1e-12, err_msg=key)


def test_streamed_volumes_match_sklearn():
    probs, labels = _volumes()
    index = np.arange(_SHAPE[0])[:, None, None]
    state = SegmentationMetrics.empty()
    for lo, hi in ((0, 1), (1, 4)):
        state = _update(state, probs, labels, _ALL & (index >= lo) & (index < hi))
    _assert_matches(state.compute(), _reference(probs, labels))


def test_empty_foreground_on_both_sides_is_perfect_agreement():
    probs, labels = np.zeros(_SHAPE, np.float32), np.zeros(_SHAPE, np.int32)
    result = _update(SegmentationMetrics.empty(), probs, labels, _ALL).compute()
    assert result["dice"] == 1.0 and result["iou"] == 1.0
    assert np.isnan(result["precision"]) and np.isnan(result["recall"])


def test_undefined_precision_and_recall_are_nan():
    probs, labels = _volumes()
    nothing_predicted = _update(SegmentationMetrics.empty(), probs * 0, labels, _ALL).compute()
    assert np.isnan(nothing_predicted["precision"]) and nothing_predicted["recall"] == 0.0
    assert nothing_predicted["dice"] == 0.0
    no_truth = _update(SegmentationMetrics.empty(), probs, labels * 0, _ALL).compute()
    assert np.isnan(no_truth["recall"]) and no_truth["precision"] == 0.0
    assert np.isnan(SegmentationMetrics.empty().compute()["dice"])


def test_threshold_is_applied_strictly():
    probs = np.full(_SHAPE, 0.5, np.float32)
    probs[0, 0, :2] = [0.51, 0.9]
    labels = np.zeros(_SHAPE, np.int32)
    labels[0, 0, :3] = 1
    result = _update(SegmentationMetrics.empty(), probs, labels, _ALL).compute()
    assert result["fg_fraction_pred"] * result["count"] == 2.0
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(2 / 3)


def test_masked_and_nonfinite_voxels_are_excluded():
    probs, labels = _volumes(seed=1)
    body = np.random.default_rng(2).random(_SHAPE) > 0.25
    garbage = np.where(body, probs, 1.0).astype(np.float32)
    masked = _update(SegmentationMetrics.empty(), garbage, labels, body).compute()
    _assert_matches(masked, _reference(probs[body], labels[body]))
    poisoned = np.where(body, probs, np.nan).astype(np.float32)
    unmasked = _update(SegmentationMetrics.empty(), poisoned, labels, _ALL).compute()
    expected = _reference(probs[body], labels[body])
    expected["nonfinite"] = float((~body).sum())
    _assert_matches(unmasked, expected)


def test_counts_stay_exact_past_float32_integer_range():
    # float32 stops counting at 2**24 (2**24 + 1 rounds back to 2**24); int32 does not.
    state = SegmentationMetrics.empty().replace(true_negatives=jnp.int32(2**24))
    one_voxel = np.zeros(_SHAPE, bool)
    one_voxel[0, 0, 0] = True
    state = _update(state, np.zeros(_SHAPE, np.float32), np.zeros(_SHAPE, np.int32), one_voxel)
    assert int(state.true_negatives) == 2**24 + 1
    assert np.float32(2**24) + np.float32(1) == np.float32(2**24)


def test_jit_matches_eager():
    probs, labels = _volumes(seed=3)
    eager = SegmentationMetrics.empty().update(probs, labels, _ALL).compute()
    _assert_matches(_update(SegmentationMetrics.empty(), probs, labels, _ALL).compute(), eager)


def _segmentation_update_once_traced(state, probs, labels):
    return state.update(probs, labels)


_update_checked = jax.jit(chex.assert_max_traces(_segmentation_update_once_traced, n=1))


def test_jitted_update_does_not_retrace_for_same_shapes():
    state = SegmentationMetrics.empty()
    for seed in range(3):
        state = _update_checked(state, *_volumes(seed=seed))
    assert state.compute()["count"] == 3 * np.prod(_SHAPE)


def test_bad_input_names_the_argument():
    state = SegmentationMetrics.empty()
    with pytest.raises(ValueError, match="SegmentationMetrics.update: `probs` has shape"):
        state.update(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="`probs` must have at least 1 axes"):
        state.update(np.float32(0.3), np.float32(1.0))
    with pytest.raises(ValueError, match="SegmentationMetrics.empty: `threshold`"):
        SegmentationMetrics.empty(threshold=1.5)
    with pytest.raises(ValueError, match="different `threshold`"):
        state.merge(SegmentationMetrics.empty(threshold=0.4))


def test_merge_stacked_of_three_states_equals_single_pass():
    probs, labels = _volumes(seed=4)
    index = np.arange(_SHAPE[0])[:, None, None]
    states = [
        _update(SegmentationMetrics.empty(), probs, labels, _ALL & (index >= lo) & (index < hi))
        for lo, hi in ((0, 1), (1, 3), (3, 4))
    ]
    merged = _merge_stacked(jax.tree.map(lambda *x: jnp.stack(x), *states))
    _assert_matches(merged.compute(), _reference(probs, labels))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, _SHAPE[0]), min_size=2, max_size=2),
)
def test_split_stream_matches_single_pass_and_merge_is_associative(seed, cuts):
    probs, labels = _volumes(seed=seed)
    index = np.arange(_SHAPE[0])[:, None, None]
    bounds = [0, *sorted(cuts), _SHAPE[0]]
    a, b, c = (
        _update(SegmentationMetrics.empty(), probs, labels, _ALL & (index >= lo) & (index < hi))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    left, right = _merge(_merge(a, b), c), _merge(a, _merge(b, c))
    for got, want in zip(jax.tree.leaves(left), jax.tree.leaves(right), strict=True):
        np.testing.assert_array_equal(got, want)
    _assert_matches(left.compute(), _reference(probs, labels))
