"""Sliding-window inference: exact reassembly, blending and argument checks."""

import numpy as np
import pytest

from jaxguard.tasks.surface import inference


class _Recorder:
    """An identity predictor that records the batch shapes it was called with."""

    def __init__(self):
        self.shapes = []

    def __call__(self, patches):
        self.shapes.append(patches.shape)
        return patches


@pytest.mark.parametrize("blend", inference.BLENDS)
@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 18, 9)], ids=["cube", "uneven"])
def test_identity_model_reassembles_the_input_exactly(blend, shape):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    predictor = _Recorder()
    out = inference.sliding_window_predict(predictor, volume, 8, 0.5, blend, batch_size=5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, volume)
    # Every call has the fixed batch shape, the last batch padded.
    assert set(predictor.shapes) == {(5, 8, 8, 8)}


def test_every_voxel_is_covered_and_windows_end_at_the_border():
    assert inference.window_starts(16, 8, 4) == [0, 4, 8]
    assert inference.window_starts(13, 8, 4) == [0, 4, 5]
    assert inference.window_starts(8, 8, 4) == [0]


def test_constant_blend_averages_overlapping_predictions():
    # The volume holds each voxel's axis-0 index, and every patch predicts its own start
    # (read from its first voxel) everywhere: overlaps get the mean of the covering starts.
    volume = np.broadcast_to(np.arange(12.0)[:, None, None], (12, 8, 8)).copy()

    def predict_start(patches):
        return np.broadcast_to(patches[:, :1, :1, :1], patches.shape)

    out = inference.sliding_window_predict(predict_start, volume, 8, 0.5, "constant")
    expected = np.repeat([0.0, 2.0, 4.0], 4)  # starts [0, 4]: covered by 0, both, 4
    np.testing.assert_array_equal(out[:, 3, 5], expected)


def test_gaussian_weights_favour_the_patch_centre():
    weights = inference.blend_weights(8, "gaussian")
    assert weights.shape == (8, 8, 8)
    assert weights.max() == pytest.approx(1.0)
    assert weights[3:5, 3:5, 3:5].min() == weights.max()  # the four central voxels
    assert weights[0, 0, 0] == pytest.approx(1e-3)  # the corner is floored
    np.testing.assert_allclose(weights, weights[::-1, ::-1, ::-1])  # symmetric
    np.testing.assert_array_equal(inference.blend_weights(8, "constant"), np.ones((8, 8, 8)))


def test_gaussian_blend_prefers_the_central_prediction():
    # Two patches overlap on axis 0 voxels 4..7; the first predicts 0, the second 1. With
    # Gaussian weights, voxel 4 (the first patch's centre side, the second's border) leans
    # towards 0, voxel 7 towards 1.
    volume = np.zeros((12, 8, 8), np.float32)

    def predict(patches):
        out = np.zeros_like(patches)
        out[1] = 1.0  # the patch starting at 4
        return out

    out = inference.sliding_window_predict(predict, volume, 8, 0.5, "gaussian", batch_size=2)
    assert out[4, 4, 4] < 0.5 < out[7, 4, 4]
    np.testing.assert_array_equal(out[:4], 0.0)
    np.testing.assert_array_equal(out[8:], 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volume": np.zeros((4, 8, 8))}, "every side"),
        ({"volume": np.zeros((8, 8))}, "must be \\[D, H, W\\]"),
        ({"overlap": 1.0}, "overlap"),
        ({"blend": "linear"}, "blend"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"volume": np.zeros((8, 8, 8)), "overlap": 0.5, "blend": "gaussian", **kwargs}
    with pytest.raises(ValueError, match=match):
        inference.sliding_window_predict(
            lambda p: p, arguments["volume"], 8, arguments["overlap"], arguments["blend"]
        )


def test_predictor_with_wrong_output_shape_is_reported():
    with pytest.raises(ValueError, match="predict_patch"):
        inference.sliding_window_predict(lambda p: p[:, 0], np.zeros((8, 8, 8)), 8, 0.0)
