"""The surface task's compound loss against float64 NumPy / scipy references.

Each loss function has its own reference tests in tests/losses/test_segmentation.py; here
the composite that the task declares is checked as a whole: its total is the weighted sum
of independently computed terms, the class weights reach the focal term voxel by voxel,
and alpha and the weights come from the training data's class frequencies.
"""

import os

import jax
import numpy as np
import pytest
from segmentation_references import signed_distance, soft_skeleton

from jaxguard import config as config_lib
from jaxguard.tasks.surface import loss as loss_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")
_SHAPE = (2, 6, 6, 6)


def _config(*overrides):
    return config_lib.load_config(SMALL, list(overrides))


def _splits_with_foreground(fraction, shape=(4, 4, 4, 4)):
    """Training labels with exactly `fraction` foreground voxels."""
    labels = np.zeros(int(np.prod(shape)), np.float32)
    labels[: int(round(fraction * labels.size))] = 1
    return {"train": {"labels": labels.reshape(shape)}}


def _jitted(loss):
    """The composite under jit (a CompositeLoss is not hashable, so it is closed over)."""
    return jax.jit(lambda arrays: loss(arrays))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _per_example_mean(x):
    return x.reshape(len(x), -1).mean(axis=1)


def _dice(p, t, smooth):
    axes = (1, 2, 3)
    return 1 - (2 * (p * t).sum(axes) + smooth) / (p.sum(axes) + t.sum(axes) + smooth)


def _focal(x, t, alpha, gamma):
    log_p = -np.logaddexp(0, -x)
    log_q = -np.logaddexp(0, x)
    log_p_t = np.where(t == 1, log_p, log_q)
    alpha_t = np.where(t == 1, alpha, 1 - alpha)
    return -alpha_t * (1 - np.exp(log_p_t)) ** gamma * log_p_t


def _cldice(p, t, iterations, smooth):
    axes = (1, 2, 3)
    skeleton_p, skeleton_t = soft_skeleton(p, iterations), soft_skeleton(t, iterations)
    precision = ((skeleton_p * t).sum(axes) + smooth) / (skeleton_p.sum(axes) + smooth)
    sensitivity = ((skeleton_t * p).sum(axes) + smooth) / (skeleton_t.sum(axes) + smooth)
    return 1 - 2 * precision * sensitivity / (precision + sensitivity)


def _connectivity(p, t):
    total, edges = np.zeros(len(p)), 0
    for axis in (1, 2, 3):
        n = p.shape[axis]
        p_i, p_j = np.take(p, range(n - 1), axis), np.take(p, range(1, n), axis)
        t_i, t_j = np.take(t, range(n - 1), axis), np.take(t, range(1, n), axis)
        target, linked = t_i * t_j, p_i * p_j
        total += (
            (-(target * np.log(linked) + (1 - target) * np.log(1 - linked)))
            .reshape(len(p), -1)
            .sum(1)
        )
        edges += linked[0].size
    return total / edges


def _case(seed=0, foreground=0.66):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=_SHAPE)).astype(np.float32)
    labels = (rng.random(_SHAPE) < foreground).astype(np.float32)
    inputs = {
        "logits": logits,
        "labels": labels,
        "signed_distance": signed_distance(labels).astype(np.float32),
    }
    return inputs


def _reference_terms(inputs, config, alpha, weights):
    cfg = config.loss
    x = np.asarray(inputs["logits"], np.float64)
    t = np.asarray(inputs["labels"], np.float64)
    p = _sigmoid(x)
    focal = _focal(x, t, alpha, cfg.focal_gamma)
    if weights is not None:
        focal = focal * np.where(t == 1, weights[1], weights[0])
    return {
        "dice": _dice(p, t, cfg.dice_smooth).mean(),
        "focal": _per_example_mean(focal).mean(),
        "boundary": _per_example_mean(p * inputs["signed_distance"]).mean(),
        "cldice": _cldice(p, t, cfg.cldice_iterations, cfg.cldice_smooth).mean(),
        "connectivity": _connectivity(p, t).mean(),
    }


@pytest.mark.parametrize("use_class_weights", [True, False])
def test_total_is_the_weighted_sum_of_independent_terms(use_class_weights):
    config = _config(f"loss.use_class_weights={use_class_weights}")
    splits = _splits_with_foreground(0.75)
    loss = loss_lib.make_loss(config, splits, steps_per_epoch=1)
    inputs = _case()
    total, logged = _jitted(loss)(inputs)
    weights = (2.0, 2.0 / 3.0) if use_class_weights else None  # 1 / (2 f) for f = 0.25, 0.75
    expected = _reference_terms(inputs, config, alpha=0.25, weights=weights)
    cfg = config.loss
    term_weights = {
        "dice": cfg.dice_weight,
        "focal": cfg.focal_weight,
        "boundary": cfg.boundary_weight,
        "cldice": cfg.cldice_weight,
        "connectivity": cfg.connectivity_weight,
    }
    assert set(term_weights) == {"dice", "focal", "boundary", "cldice", "connectivity"}
    assert (cfg.dice_weight, cfg.focal_weight, cfg.boundary_weight) == (0.3, 0.4, 0.15)
    assert (cfg.cldice_weight, cfg.connectivity_weight) == (0.10, 0.05)
    for name, value in expected.items():
        np.testing.assert_allclose(logged[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(logged[f"{name}/weight"], term_weights[name], rtol=1e-6)
    weighted_sum = sum(term_weights[name] * value for name, value in expected.items())
    np.testing.assert_allclose(total, weighted_sum, rtol=2e-5, atol=1e-6)


def test_class_weights_multiply_the_focal_term_voxel_by_voxel():
    splits = _splits_with_foreground(0.75)
    # Only the focal term is compared: leave the others out (and out of the compile).
    others = [f"loss.{name}_weight=0.0" for name in loss_lib.TERM_NAMES if name != "focal"]
    weighted = _jitted(loss_lib.make_loss(_config(*others), splits, 1))
    plain = _jitted(loss_lib.make_loss(_config("loss.use_class_weights=False", *others), splits, 1))
    inputs = _case(seed=3)
    # All-foreground labels: every voxel weighs 2/3; all-background: 2.
    for fill, weight in ((1.0, 2.0 / 3.0), (0.0, 2.0)):
        inputs["labels"] = np.full(_SHAPE, fill, np.float32)
        inputs["signed_distance"] = np.zeros(_SHAPE, np.float32)
        np.testing.assert_allclose(
            weighted(inputs)[1]["focal"], weight * plain(inputs)[1]["focal"], rtol=1e-6
        )


def test_alpha_and_class_weights_come_from_the_training_frequencies():
    alpha, weights = loss_lib.focal_settings(_config(), _splits_with_foreground(0.75))
    assert alpha == pytest.approx(0.25)
    np.testing.assert_allclose(weights, [2.0, 2.0 / 3.0], rtol=1e-6)
    # The seed's 66% foreground: alpha 0.34 and weights 1 / (2 f) = (1.4706, 0.7576).
    alpha, weights = loss_lib.focal_settings(_config(), _splits_with_foreground(0.66, (50, 100)))
    assert alpha == pytest.approx(0.34)
    np.testing.assert_allclose(weights, [1 / 0.68, 1 / 1.32], rtol=1e-6)
    # A configured alpha wins; the switch turns the weights off.
    alpha, weights = loss_lib.focal_settings(
        _config("loss.focal_alpha=0.5", "loss.use_class_weights=False"),
        _splits_with_foreground(0.75),
    )
    assert alpha == 0.5 and weights is None


def test_class_weights_need_both_classes():
    with pytest.raises(config_lib.ConfigError, match="no background voxels"):
        loss_lib.focal_settings(_config(), _splits_with_foreground(1.0))


def test_zero_weight_leaves_a_term_out():
    loss = loss_lib.make_loss(
        _config("loss.cldice_weight=0.0", "loss.connectivity_weight=0.0"),
        _splits_with_foreground(0.5),
        1,
    )
    assert set(loss.terms) == {"dice", "focal", "boundary"}
    # All weights 0 is refused when the config is loaded, before a loss is built.
    with pytest.raises(config_lib.ConfigError, match="every term weight is 0"):
        _config(*(f"loss.{n}_weight=0.0" for n in loss_lib.TERM_NAMES))
