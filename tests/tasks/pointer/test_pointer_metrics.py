"""The pointer task's metrics (`jaxguard/tasks/pointer/metrics.py`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.tasks.pointer import metrics


def test_metrics_track_the_highest_done_probability_on_done_examples():
    state = metrics.PointerMetrics.empty((64, 64))
    assert math.isnan(state.compute()["done_prob_max_positive"])
    xy = jnp.full((4, 2), 0.5)
    state = state.update(xy, xy, jnp.array([0.9, 0.2, 0.4, 0.1]), jnp.array([0, 1, 1, 0.0]))
    state = jax.jit(metrics.PointerMetrics.update)(
        state, xy, xy, jnp.array([0.3, 0.35, 0.95, 0.1]), jnp.array([1.0, 0, 0, 0])
    )
    result = state.compute()
    assert result["done_prob_max_positive"] == pytest.approx(0.4)
    assert result["done_recall"] == 0.0 and result["count"] == 8


def test_empty_metrics_bin_half_pixels_of_the_configured_images(load_small):
    state = metrics.empty_metrics(load_small())
    assert state.compute().keys() >= {"pixel_error_median", "done_prob_max_positive"}
    assert state.pointing.image_size == (64, 64)
    assert state.pointing.pixel_errors.counts.shape == (math.ceil(2 * math.hypot(64, 64)),)


def test_soft_miss_rate_matches_a_numpy_count_of_errors_in_the_zone():
    rng = np.random.default_rng(0)
    size = (96, 128)
    n = 400
    target = rng.uniform(0.1, 0.9, (n, 2)).astype(np.float32)
    # Errors spread over 0-60 px in random directions; a quarter of the examples are done.
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = rng.uniform(0, 60, n)
    pred = target + np.stack(
        [radius * np.cos(angle) / size[1], radius * np.sin(angle) / size[0]], axis=1
    ).astype(np.float32)
    done = (rng.random(n) < 0.25).astype(np.float32)
    state = metrics.PointerMetrics.empty(size, soft_zone_px=(12.0, 38.0))
    state = jax.jit(metrics.PointerMetrics.update)(
        state, jnp.asarray(pred), jnp.asarray(target), jnp.full((n,), 0.1), jnp.asarray(done)
    )
    error = np.hypot(
        (pred[:, 0].astype(np.float64) - target[:, 0]) * size[1],
        (pred[:, 1].astype(np.float64) - target[:, 1]) * size[0],
    )[done == 0]
    # Half-pixel bins counted by their centre: exact except for errors within 0.25 px of an
    # edge, so bound the share by the counts with the zone shrunk and grown by half a bin.
    lower = np.mean((error >= 12.25) & (error < 37.75))
    upper = np.mean((error >= 11.75) & (error < 38.25))
    rate = state.compute()["soft_miss_rate"]
    assert lower <= rate <= upper
    assert 0.3 < rate < 0.5  # (38 - 12) / 60 of a uniform 0-60 px spread.


def test_soft_miss_rate_is_zero_when_the_threshold_is_inside_the_miss_radius():
    state = metrics.PointerMetrics.empty((64, 64), soft_zone_px=(12.0, 8.0))
    xy = jnp.full((3, 2), 0.5)
    state = state.update(xy, xy + 0.15, jnp.zeros(3), jnp.zeros(3))
    assert state.compute()["soft_miss_rate"] == 0.0
    assert math.isnan(metrics.PointerMetrics.empty((64, 64)).compute()["soft_miss_rate"])


def test_the_soft_zone_comes_from_the_guard_section_and_the_loss_threshold(load_small):
    config = load_small()
    assert metrics.soft_zone_px(config) == (2 * config.data.object_radius, 0.1 * 64)
    config = load_small("guard.lenient_threshold.miss_px=5.0", "loss.threshold=0.5")
    assert metrics.empty_metrics(config).soft_zone_px == (5.0, 32.0)
