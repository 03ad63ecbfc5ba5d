"""The surface task's clDice and streaming metrics (`jaxguard/tasks/surface/metrics.py`)."""

import os

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxguard import config as config_lib
from jaxguard.tasks.surface import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")

_cldice = jax.jit(metrics.binary_cldice, static_argnames="iterations")
_update = jax.jit(metrics.SurfaceMetrics.update)


def _slab(shape=(8, 8, 8)):
    slab = np.zeros(shape, np.float32)
    slab[2:5] = 1  # 3 voxels thick along axis 0, spanning axes 1 and 2
    return slab


def test_cldice_of_a_cut_slab_is_hand_computed():
    truth = _slab()
    cut = truth.copy()
    cut[:, :, 3:5] = 0  # a 2-voxel cut through the whole sheet
    # The true skeleton is the centre plane (64 voxels); the cut prediction covers 48 of
    # them (Tsens = 0.75), and the cut pieces' skeletons lie inside the truth (Tprec = 1).
    expected = 2 * 1.0 * 0.75 / (1.0 + 0.75)
    scores = _cldice(np.stack([truth, cut]), np.stack([truth, truth]), iterations=3)
    np.testing.assert_allclose(scores, [1.0, expected], rtol=1e-6)


def test_cldice_of_empty_masks():
    empty, slab = np.zeros((8, 8, 8), np.float32), _slab()
    scores = _cldice(np.stack([empty, empty, slab]), np.stack([empty, slab, empty]), iterations=3)
    # Both empty: perfect. Missing the sheet, or predicting one that is not there: 0.
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0])


def _batches(seed=0, count=3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, 2, 8, 8, 8)) < 0.6).astype(np.float32)
    probs = np.clip(0.6 * labels + 0.5 * rng.random(labels.shape), 0, 1).astype(np.float32)
    return probs, labels


def test_surface_metrics_stream_and_merge_exactly():
    probs, labels = _batches()
    single = metrics.SurfaceMetrics.empty(iterations=3)
    for p, t in zip(probs, labels, strict=True):
        single = _update(single, p, t)
    first = _update(metrics.SurfaceMetrics.empty(iterations=3), probs[0], labels[0])
    rest = metrics.SurfaceMetrics.empty(iterations=3)
    for p, t in zip(probs[1:], labels[1:], strict=True):
        rest = _update(rest, p, t)
    merged = first.merge(rest).compute()
    result = single.compute()
    assert merged == result
    # clDice: the mean over all examples of the per-example values.
    flat_probs = probs.reshape(-1, 8, 8, 8)
    flat_labels = labels.reshape(-1, 8, 8, 8)
    per_example = _cldice((flat_probs > 0.5).astype(np.float32), flat_labels, iterations=3)
    assert result["cldice"] == pytest.approx(float(np.mean(per_example)), rel=1e-6)
    # The confusion-count part is SegmentationMetrics: dice is the voxel F1.
    truth, predicted = flat_labels.ravel() >= 0.5, flat_probs.ravel() > 0.5
    assert result["dice"] == pytest.approx(skm.f1_score(truth, predicted), rel=1e-12)
    assert result["fg_fraction_true"] == pytest.approx(truth.mean(), rel=1e-12)


def test_merge_refuses_other_skeleton_depths():
    with pytest.raises(ValueError, match="iterations differ"):
        metrics.SurfaceMetrics.empty(iterations=3).merge(metrics.SurfaceMetrics.empty(iterations=5))


def test_empty_metrics_give_nan_cldice():
    assert np.isnan(metrics.SurfaceMetrics.empty(iterations=2).compute()["cldice"])


def test_all_foreground_dice_is_two_f_over_one_plus_f():
    labels = np.zeros(100)
    labels[:66] = 1
    assert metrics.all_foreground_dice(labels) == pytest.approx(2 * 0.66 / 1.66)


def test_update_metrics_hook_thresholds_the_sigmoid_of_the_logits():
    config = config_lib.load_config(SMALL, ["loss.cldice_iterations=3"])
    _, labels = _batches(count=1)
    logits = np.random.default_rng(1).normal(size=labels[0].shape).astype(np.float32)
    hooked = metrics.update_metrics(
        metrics.empty_metrics(config), {"logits": logits, "labels": labels[0]}, {}
    )
    direct = metrics.SurfaceMetrics.empty(iterations=3).update(jax.nn.sigmoid(logits), labels[0])
    assert hooked.iterations == 3
    assert hooked.compute() == direct.compute()
