"""The pointer task's coordinate convention: round trips, pixel indices, thresholds."""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxguard.metrics import PointingMetrics
from jaxguard.tasks.pointer import coords

_SIZES = st.tuples(st.integers(1, 500), st.integers(1, 500))


@settings(max_examples=50, deadline=None)
@given(size=_SIZES, fractions=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1))
def test_pixels_and_normalized_round_trip(size, fractions):
    height, width = size
    # Pixel positions anywhere inside the image: columns from -0.5 to width - 0.5.
    pixels = np.array(fractions) * np.array([width, height]) - 0.5
    xy = coords.pixels_to_normalized(pixels, size)
    assert np.all((xy >= 0) & (xy <= 1))
    np.testing.assert_allclose(coords.normalized_to_pixels(xy, size), pixels, atol=1e-9)
    np.testing.assert_allclose(
        coords.pixels_to_normalized(coords.normalized_to_pixels(xy, size), size), xy, atol=1e-12
    )


@settings(max_examples=50, deadline=None)
@given(size=_SIZES, data=st.data())
def test_pixel_centres_map_back_to_their_pixel(size, data):
    height, width = size
    column = data.draw(st.integers(0, width - 1))
    row = data.draw(st.integers(0, height - 1))
    xy = coords.pixels_to_normalized(np.array([column, row]), size)
    assert tuple(coords.pixel_index(xy, size)) == (column, row)


def test_convention_by_hand():
    # 384 px wide: the first pixel's centre is 0.5 / 384, the last one's 383.5 / 384.
    xy = coords.pixels_to_normalized(np.array([[0, 0], [383, 191]]), (384, 384))
    np.testing.assert_allclose(xy, [[0.5 / 384, 0.5 / 384], [383.5 / 384, 191.5 / 384]])
    # The image edges belong to the outermost pixels.
    edges = np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(coords.pixel_index(edges, (10, 20)), [[0, 0], [19, 9]])


def test_pixel_error_is_the_pointing_metrics_convention(rng):
    size = (48, 64)
    pred, target = rng.random((30, 2)), rng.random((30, 2))
    metrics = PointingMetrics.empty(size, bins=4096)
    metrics = metrics.update(
        jnp.asarray(pred, jnp.float32),
        jnp.asarray(target, jnp.float32),
        jnp.zeros(30),
        jnp.zeros(30),
    )
    errors = coords.pixel_error(pred, target, size)
    by_hand = np.hypot((pred - target)[:, 0] * 64, (pred - target)[:, 1] * 48)
    np.testing.assert_allclose(errors, by_hand)
    np.testing.assert_allclose(metrics.compute()["pixel_error_mean"], errors.mean(), rtol=1e-5)


def test_distance_scale_makes_distances_isotropic():
    size = (100, 400)  # Wider than tall: the longer side is the width.
    scale = coords.distance_scale(size)
    a, b = np.array([0.1, 0.2]), np.array([0.15, 0.6])
    pixels = np.linalg.norm(
        coords.normalized_to_pixels(a, size) - coords.normalized_to_pixels(b, size)
    )
    np.testing.assert_allclose(np.linalg.norm((a - b) * scale) * 400, pixels)


def test_threshold_units_round_trip():
    assert coords.threshold_in_both_units(0.1, "normalized", (384, 384)) == pytest.approx(
        (0.1, 38.4)
    )
    assert coords.threshold_in_both_units(38.4, "pixels", (384, 384)) == pytest.approx((0.1, 38.4))
    # Non-square: units of the longer side.
    assert coords.threshold_in_both_units(30, "pixels", (200, 300)) == pytest.approx((0.1, 30))
    with pytest.raises(ValueError, match="threshold units"):
        coords.threshold_in_both_units(0.1, "px", (384, 384))
    with pytest.raises(ValueError, match="> 0"):
        coords.threshold_in_both_units(0.0, "pixels", (384, 384))
