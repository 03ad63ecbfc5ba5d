"""value_and_grad_into: jax.value_and_grad's value and gradient, written into a donated buffer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard import losses

EXTREME = functools.partial(
    losses.extreme_weighted_mae, threshold=1.0, lambda_base=1.0, lambda_ext=5.0
)


def fields(seed):
    keys = jax.random.split(jax.random.key(seed))
    target = jax.random.gamma(keys[0], 0.6, (4, 8, 8)) * 2.0
    return target + jax.random.normal(keys[1], target.shape), target


def test_value_and_gradient_equal_jax_value_and_grad_call_after_call():
    step = losses.value_and_grad_into(EXTREME)
    grad = jnp.zeros((4, 8, 8))
    for seed in range(3):
        pred, target = fields(seed)
        value, grad = step(pred, target, out=grad)
        want_value, want_grad = jax.value_and_grad(EXTREME)(pred, target)
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6)


def test_the_buffer_is_donated_and_the_inputs_are_kept():
    step = losses.value_and_grad_into(EXTREME)
    pred, target = fields(0)
    buffer = jnp.zeros_like(pred)
    _, grad = step(pred, target, out=buffer)
    assert buffer.is_deleted() and not grad.is_deleted()
    assert not pred.is_deleted() and not target.is_deleted()


def test_a_buffer_of_another_shape_or_dtype_is_refused_in_one_line():
    step = losses.value_and_grad_into(EXTREME)
    pred, target = fields(0)
    with pytest.raises(
        ValueError, match=r"`out` is float32\[4, 8\] but `pred` is float32\[4, 8, 8\]"
    ):
        step(pred, target, out=jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"`out` is int32"):
        step(pred, target, out=jnp.zeros((4, 8, 8), jnp.int32))
