"""The pointer task's metrics (`jaxguard/tasks/pointer/metrics.py`)."""

import math

import jax
import jax.numpy as jnp
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
