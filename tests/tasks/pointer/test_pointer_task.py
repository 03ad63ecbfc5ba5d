"""Pointer task pieces: the seed's loss, the declared loss, metrics, guards and the audit."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import losses
from jaxguard.tasks.pointer import task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "pointer.py:small")


def _config(*overrides):
    return config_lib.load_config(SMALL, list(overrides))


@pytest.fixture(scope="module")
def small():
    config = _config()
    return config, task.make_splits(config)


# ----------------------------------------------------------------------------- losses


def _seed_reference(pred, target, threshold, norm):
    delta = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    d = np.abs(delta).sum(-1) if norm == "l1" else np.hypot(delta[:, 0], delta[:, 1])
    return np.where(d < threshold, d**2, threshold * d + threshold**2)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_seed_hinge_matches_a_float64_reference(rng, norm):
    pred = rng.random((64, 2)).astype(np.float32)
    target = rng.random((64, 2)).astype(np.float32)
    got = task.seed_discontinuous_hinge(pred, target, threshold=0.1, norm=norm)
    np.testing.assert_allclose(got, _seed_reference(pred, target, 0.1, norm), rtol=1e-5)
    jitted = jax.jit(lambda p, t: task.seed_discontinuous_hinge(p, t, threshold=0.1, norm=norm))
    np.testing.assert_allclose(jitted(pred, target), got, rtol=1e-6)


def test_seed_hinge_jumps_where_the_continuous_one_does_not():
    tau = 0.1
    below, above = (
        np.array([[tau - 1e-4, 0.0]], np.float32),
        np.array([[tau + 1e-4, 0.0]], np.float32),
    )
    zero = np.zeros((1, 2), np.float32)
    jump = task.seed_discontinuous_hinge(above, zero, threshold=tau) - (
        task.seed_discontinuous_hinge(below, zero, threshold=tau)
    )
    assert float(jump[0]) == pytest.approx(tau**2, rel=0.05)  # tau^2 -> 2 tau^2
    smooth = losses.distance_hinge(above, zero, threshold=tau) - losses.distance_hinge(
        below, zero, threshold=tau
    )
    assert abs(float(smooth[0])) < 1e-4


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_seed_hinge_gradients_are_finite_at_an_exact_hit(norm):
    points = jnp.array([[0.3, 0.4], [0.5, 0.5]])
    grad = jax.grad(
        lambda p: task.seed_discontinuous_hinge(p, points, threshold=0.1, norm=norm).sum()
    )(points)
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_seed_hinge_names_a_bad_argument():
    with pytest.raises(ValueError, match="seed_discontinuous_hinge: `pred` has shape"):
        task.seed_discontinuous_hinge(jnp.zeros((3, 2)), jnp.zeros((4, 2)), threshold=0.1)
    with pytest.raises(ValueError, match="`norm`"):
        task.seed_discontinuous_hinge(
            jnp.zeros((3, 2)), jnp.zeros((3, 2)), threshold=0.1, norm="l3"
        )


def test_declared_loss_equals_a_float64_re_derivation(small):
    config, splits = small
    batch = {k: v[:16] for k, v in splits["train"].items()}
    rng = np.random.default_rng(1)
    outputs = {
        "xy": jnp.asarray(rng.random((16, 2)), jnp.float32),
        "done_logit": jnp.asarray(rng.normal(size=16), jnp.float32),
    }
    loss = task.make_loss(config, splits, steps_per_epoch=1)
    total, terms = loss(task.loss_inputs(outputs, batch))
    rate = splits["train"]["done"].mean()
    pos_weight = (1 - rate) / rate
    done = batch["done"].astype(np.float64)
    pred = np.asarray(outputs["xy"], np.float64)
    d = np.hypot(*(pred - np.nan_to_num(batch["target_xy"])).T)
    hinge = np.where(d <= 0.1, d**2, 0.2 * d - 0.01)
    spatial = np.sum(hinge * (1 - done)) / np.sum(1 - done)
    z = np.asarray(outputs["done_logit"], np.float64)
    bce = pos_weight * done * np.logaddexp(0, -z) + (1 - done) * np.logaddexp(0, z)
    assert float(terms["spatial"]) == pytest.approx(spatial, rel=1e-5)
    assert float(terms["done"]) == pytest.approx(bce.mean(), rel=1e-5)
    assert float(total) == pytest.approx(spatial + 3.0 * bce.mean(), rel=1e-5)


def test_final_steps_keep_the_loss_and_its_gradient_finite(small):
    config, splits = small
    batch = {k: v[:16] for k, v in splits["train"].items()}
    assert np.isnan(batch["target_xy"]).any()  # the small split has final steps in it
    model = task.make_model(config, splits, nnx.Rngs(0))
    loss = task.make_loss(config, splits, steps_per_epoch=1)

    @nnx.jit
    def value_and_grad(model):
        return nnx.value_and_grad(
            lambda m: loss(task.loss_inputs(task.forward(m, batch), batch))[0]
        )(model)

    value, grads = value_and_grad(model)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_threshold_in_pixels_and_pos_weight_settings(small):
    _, splits = small
    config = _config("loss.threshold=6.4", "loss.threshold_units=pixels")
    lines = task.startup_lines(config, splits)
    assert any(
        "threshold 0.1 normalised (of the longer side) = 6.4 px on 64 x 64" in line
        for line in lines
    )
    assert task._pos_weight(_config("loss.pos_weight=2.5"), splits) == (
        2.5,
        "set in loss.pos_weight",
    )
    with pytest.raises(config_lib.ConfigError, match="loss.pos_weight must be 'auto' or a"):
        task.make_loss(_config("loss.pos_weight=lots"), splits, 1)
    with pytest.raises(config_lib.ConfigError, match="loss.spatial must be one of"):
        task.make_loss(_config("loss.spatial=huber"), splits, 1)
    with pytest.raises(config_lib.ConfigError, match="threshold units"):
        task.make_loss(_config("loss.threshold_units=px"), splits, 1)


# ----------------------------------------------------------------------------- metrics, guards


def test_metrics_track_the_highest_done_probability_on_done_examples():
    metrics = task.PointerMetrics.empty((64, 64))
    assert math.isnan(metrics.compute()["done_prob_max_positive"])
    xy = jnp.full((4, 2), 0.5)
    metrics = metrics.update(xy, xy, jnp.array([0.9, 0.2, 0.4, 0.1]), jnp.array([0, 1, 1, 0.0]))
    metrics = jax.jit(task.PointerMetrics.update)(
        metrics, xy, xy, jnp.array([0.3, 0.35, 0.95, 0.1]), jnp.array([1.0, 0, 0, 0])
    )
    result = metrics.compute()
    assert result["done_prob_max_positive"] == pytest.approx(0.4)
    assert result["done_recall"] == 0.0 and result["count"] == 8


def test_done_guard_fires_on_a_model_that_always_says_no(small):
    config, splits = small
    model = task.make_model(config, splits, nnx.Rngs(0))
    model.done_head.kernel[...] = jnp.zeros_like(model.done_head.kernel[...])
    model.done_head.bias[...] = jnp.full_like(model.done_head.bias[...], -20.0)
    val = splits["val"]
    outputs = nnx.jit(task.forward)(model, val)
    metrics = task.update_metrics(task.empty_metrics(config), outputs, val)
    figures = metrics.compute()
    assert figures["done_prob_max_positive"] < 1e-6
    guard = task.make_guards(config, splits)["done_never_predicted"]
    patience = config.model.done_guard_patience
    events = [guard.update(epoch, figures) for epoch in range(patience + 1)]
    assert events[: patience - 1] == [None] * (patience - 1)
    positives = int(val["done"].sum())
    for event in events[patience - 1 :]:
        assert event.level == "warn" and event.guard == "done_never_predicted"
        assert f"none of the {positives} done validation examples" in event.message
    # One evaluation with a confident done prediction resets the streak.
    assert guard.update(10, {**figures, "done_prob_max_positive": 0.8}) is None
    assert guard.update(11, figures) is None
    restored = task.DoneNeverPredicted(patience)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def test_head_gradient_band_warns_once_per_head_and_summarises_epoch_0():
    guard = task.HeadGradientBand(task.HEADS, (0.01, 10.0))
    inside = {f"grad_norm/{h}": 1.0 for h in task.HEADS}
    assert guard.update_step(1, 0, inside) is None
    event = guard.update_step(2, 0, {**inside, "grad_norm/y_head": 50.0})
    assert event.level == "warn" and "y_head 50" in event.message and "[0.01, 10]" in event.message
    assert guard.update_step(3, 0, {**inside, "grad_norm/y_head": 60.0}) is None  # warned already
    summary = guard.update(0, {})
    assert summary.level == "warn" and "2 of 9 outside" in summary.message
    assert "y_head median 50" in summary.message
    assert guard.update_step(40, 1, {**inside, "grad_norm/x_head": 1e-9}) is None  # epoch 1
    quiet = task.HeadGradientBand(task.HEADS, (0.01, 10.0))
    quiet.update_step(1, 0, inside)
    assert quiet.update(0, {}).level == "info"
    with pytest.raises(config_lib.ConfigError, match="head_grad_band"):
        task.HeadGradientBand(task.HEADS, (5.0, 1.0))


# ----------------------------------------------------------------------------- audit


def _hand_split(done, images, objects):
    n = len(done)
    return {
        "done": np.array(done, np.float32),
        "image_id": np.array(images),
        "num_objects": np.array(objects),
        "image": np.zeros((n, 4, 4, 1), np.uint8),
    }


def test_audit_counts_a_hand_built_dataset():
    splits = {
        "train": _hand_split(
            [1, 0, 0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [3] * 10
        ),
        "val": _hand_split([0, 0, 0, 1], [7, 8, 9, 9], [2, 4, 6, 6]),
        "test": _hand_split([0, 0, 0], [5, 5, 6], [1, 1, 1]),
    }
    result = task.audit(_config(), splits)
    assert result["train"] == {
        "examples": 10,
        "images": 5,
        "done": 2,
        "not_done": 8,
        "done_rate": 0.2,
        "objects_per_example": 3.0,
        "balancing_pos_weight": pytest.approx(4.0),
    }
    assert result["val"]["done"] == 1 and result["val"]["images"] == 3
    assert result["val"]["balancing_pos_weight"] == pytest.approx(3.0)
    assert result["val"]["objects_per_example"] == 4.5
    assert result["test"]["done"] == 0 and math.isnan(result["test"]["balancing_pos_weight"])
    advice = "\n".join(result["recommendations"])
    assert "pos_weight = (1 - rate) / rate = 4" in advice
    assert "test has no done examples" in advice and "val has 1 done examples" in advice
    fixed = task.audit(_config("loss.pos_weight=1"), splits)["recommendations"]
    assert any("loss.pos_weight=1 weights a done example 0.25x" in line for line in fixed)
