import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxguard import losses


def _weighted_bce_numpy(logits, labels, pos_weight):
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    return -(pos_weight * y * np.log(p) + (1 - y) * np.log1p(-p))


def test_matches_float64_reference(rng):
    logits = rng.normal(0, 3, size=(5, 7)).astype(np.float32)
    labels = (rng.uniform(size=(5, 7)) < 0.3).astype(np.float32)
    got = losses.weighted_sigmoid_binary_cross_entropy(logits, labels, pos_weight=32.3)
    np.testing.assert_allclose(got, _weighted_bce_numpy(logits, labels, 32.3), rtol=2e-5)


def test_pos_weight_one_is_optax(rng):
    logits = rng.normal(0, 3, size=(64,)).astype(np.float32)
    labels = rng.uniform(size=64).astype(np.float32)
    np.testing.assert_allclose(
        losses.weighted_sigmoid_binary_cross_entropy(logits, labels),
        optax.losses.sigmoid_binary_cross_entropy(logits, labels),
        rtol=1e-5,
        atol=1e-6,
    )


def test_large_logits_stay_finite():
    logits = jnp.array([-200.0, 200.0, -200.0, 200.0])
    labels = jnp.array([1.0, 0.0, 0.0, 1.0])
    value, grad = jax.value_and_grad(
        lambda x: losses.weighted_sigmoid_binary_cross_entropy(x, labels, pos_weight=3.0).sum()
    )(logits)
    np.testing.assert_allclose(value, 3.0 * 200.0 + 200.0)
    np.testing.assert_allclose(grad, [-3.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_balanced_weight_equalises_class_contributions(rng):
    labels = (rng.uniform(size=2000) < 0.03).astype(np.float32)
    rate = float(labels.mean())
    pos_weight = losses.pos_weight_from_rate(rate)
    per = losses.weighted_sigmoid_binary_cross_entropy(
        jnp.zeros(2000), labels, pos_weight=pos_weight
    )
    positive_total = float(per[labels == 1].sum())
    negative_total = float(per[labels == 0].sum())
    assert positive_total == pytest.approx(negative_total, rel=1e-4)
    assert losses.pos_weight_from_rate(0.03) == pytest.approx(97 / 3)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`pos_weight` must be finite and > 0"):
        losses.weighted_sigmoid_binary_cross_entropy(jnp.zeros(2), jnp.zeros(2), pos_weight=-2.0)
    with pytest.raises(ValueError, match="`logits` has shape \\(2,\\) but `labels`"):
        losses.weighted_sigmoid_binary_cross_entropy(jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match="`positive_rate` must lie strictly between 0 and 1"):
        losses.pos_weight_from_rate(0.0)
