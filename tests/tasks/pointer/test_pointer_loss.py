"""The pointer loss (`jaxguard/tasks/pointer/loss.py`): the seed's hinge and the declared loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxguard import losses
from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import loss, model

# ----------------------------------------------------------------------------- the seed's hinge


def _seed_reference(pred, target, threshold, norm):
    delta = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    d = np.abs(delta).sum(-1) if norm == "l1" else np.hypot(delta[:, 0], delta[:, 1])
    return np.where(d < threshold, d**2, threshold * d + threshold**2)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_seed_hinge_matches_a_float64_reference(rng, norm):
    pred = rng.random((64, 2)).astype(np.float32)
    target = rng.random((64, 2)).astype(np.float32)
    got = loss.seed_discontinuous_hinge(pred, target, threshold=0.1, norm=norm)
    np.testing.assert_allclose(got, _seed_reference(pred, target, 0.1, norm), rtol=1e-5)
    jitted = jax.jit(lambda p, t: loss.seed_discontinuous_hinge(p, t, threshold=0.1, norm=norm))
    np.testing.assert_allclose(jitted(pred, target), got, rtol=1e-6)


def test_seed_hinge_jumps_where_the_continuous_one_does_not():
    tau = 0.1
    below, above = (
        np.array([[tau - 1e-4, 0.0]], np.float32),
        np.array([[tau + 1e-4, 0.0]], np.float32),
    )
    zero = np.zeros((1, 2), np.float32)
    jump = loss.seed_discontinuous_hinge(above, zero, threshold=tau) - (
        loss.seed_discontinuous_hinge(below, zero, threshold=tau)
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
        lambda p: loss.seed_discontinuous_hinge(p, points, threshold=0.1, norm=norm).sum()
    )(points)
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_seed_hinge_names_a_bad_argument():
    with pytest.raises(ValueError, match="seed_discontinuous_hinge: `pred` has shape"):
        loss.seed_discontinuous_hinge(jnp.zeros((3, 2)), jnp.zeros((4, 2)), threshold=0.1)
    with pytest.raises(ValueError, match="`norm`"):
        loss.seed_discontinuous_hinge(
            jnp.zeros((3, 2)), jnp.zeros((3, 2)), threshold=0.1, norm="l3"
        )


# ----------------------------------------------------------------------------- the declared loss


def test_declared_loss_equals_a_float64_re_derivation(small):
    config, splits = small
    batch = {k: v[:16] for k, v in splits["train"].items()}
    rng = np.random.default_rng(1)
    outputs = {
        "xy": jnp.asarray(rng.random((16, 2)), jnp.float32),
        "done_logit": jnp.asarray(rng.normal(size=16), jnp.float32),
    }
    loss_fn = loss.make_loss(config, splits, steps_per_epoch=1)
    total, terms = loss_fn(loss.loss_inputs(outputs, batch))
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
    net = model.make_model(config, splits, nnx.Rngs(0))
    loss_fn = loss.make_loss(config, splits, steps_per_epoch=1)

    @nnx.jit
    def value_and_grad(net):
        return nnx.value_and_grad(
            lambda m: loss_fn(loss.loss_inputs(model.forward(m, batch), batch))[0]
        )(net)

    value, grads = value_and_grad(net)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_pos_weight_settings(small, load_small):
    _, splits = small
    assert loss.done_pos_weight(load_small("loss.pos_weight=2.5"), splits) == (
        2.5,
        "set in loss.pos_weight",
    )
    weight, origin = loss.done_pos_weight(load_small(), splits)
    assert weight == pytest.approx(3.0) and origin.startswith("auto: (1 - rate) / rate")
    assert loss.parse_pos_weight(" Auto ") is None and loss.parse_pos_weight("5") == 5.0
    no_done = {"train": {"done": np.zeros(8, np.float32)}}
    with pytest.raises(ConfigError, match="loss.pos_weight=auto needs done and not-done"):
        loss.done_pos_weight(load_small(), no_done)


def test_distance_threshold_in_both_units(load_small):
    assert loss.distance_threshold(load_small()) == pytest.approx((0.1, 6.4))
    pixels = load_small("loss.threshold=6.4", "loss.threshold_units=pixels")
    assert loss.distance_threshold(pixels) == pytest.approx((0.1, 6.4))
