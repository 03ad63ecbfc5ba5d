import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxguard import losses


@pytest.fixture
def inputs(rng):
    return {
        "pred": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
        "target": jnp.asarray(rng.normal(1.0, 0.5, size=(8,)), jnp.float32),
        "mean": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        "logvar": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        "weights": jnp.asarray(rng.uniform(0.5, 2.0, size=(8,)), jnp.float32),
    }


@pytest.fixture
def loss():
    return losses.compose(
        mae=losses.Term(losses.absolute_error),
        variance=losses.Term(losses.variance_penalty, weight=0.5),
        kl=losses.Term(
            losses.gaussian_kl, inputs=("mean", "logvar"), weight=losses.beta_warmup(0.01, 100)
        ),
    )


def test_total_is_sum_of_weighted_terms_and_terms_match_direct_calls(loss, inputs):
    total, terms = loss(inputs, step=50)
    p, t = inputs["pred"], inputs["target"]
    assert float(terms["mae"]) == pytest.approx(float(jnp.mean(jnp.abs(p - t))), rel=1e-6)
    assert float(terms["variance"]) == pytest.approx(float(losses.variance_penalty(p, t)), rel=1e-6)
    kl = float(jnp.mean(losses.gaussian_kl(inputs["mean"], inputs["logvar"])))
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-6)
    assert float(terms["kl/weight"]) == pytest.approx(0.005)
    assert float(terms["variance/weighted"]) == pytest.approx(
        0.5 * float(terms["variance"]), rel=1e-6
    )
    weighted = sum(float(terms[f"{name}/weighted"]) for name in ("mae", "variance", "kl"))
    assert float(total) == pytest.approx(weighted, rel=1e-6)


def test_schedule_weight_follows_the_step(loss, inputs):
    _, at_start = loss(inputs, step=0)
    _, at_end = loss(inputs, step=1000)
    assert float(at_start["kl/weighted"]) == 0.0
    assert float(at_end["kl/weight"]) == pytest.approx(0.01)


def test_jit_grad_and_value_and_grad_with_aux(loss, inputs):
    def objective(pred, step):
        return loss({**inputs, "pred": pred}, step=step)

    eager_total, eager_terms = objective(inputs["pred"], 10)
    jitted = jax.jit(chex.assert_max_traces(objective, n=1))
    for step in (10, 11):  # a new step value must not retrace
        total, terms = jitted(inputs["pred"], jnp.int32(step))
    jit_total, _ = jitted(inputs["pred"], jnp.int32(10))
    assert float(jit_total) == pytest.approx(float(eager_total), rel=1e-6)
    (value, aux), grad = jax.value_and_grad(objective, has_aux=True)(inputs["pred"], 10)
    assert set(aux) == set(eager_terms)
    # Independent gradient: finite differences of the eager total.
    direction = jnp.linspace(-1.0, 1.0, 8)
    eps = 1e-3
    numeric = (
        objective(inputs["pred"] + eps * direction, 10)[0]
        - objective(inputs["pred"] - eps * direction, 10)[0]
    ) / (2 * eps)
    assert float(jnp.dot(grad, direction)) == pytest.approx(float(numeric), rel=2e-2)
    assert np.allclose(jax.grad(lambda p: objective(p, 10)[0])(inputs["pred"]), grad)


def test_example_weights_give_a_weighted_mean(inputs):
    loss = losses.compose(
        mae=losses.Term(losses.absolute_error, example_weights="weights"),
    )
    _, terms = loss(inputs)
    err = np.abs(np.asarray(inputs["pred"], np.float64) - np.asarray(inputs["target"]))
    w = np.asarray(inputs["weights"], np.float64)
    assert float(terms["mae"]) == pytest.approx(float((w * err).sum() / w.sum()), rel=1e-6)


def test_optax_losses_compose_through_partial(inputs):
    huber = losses.compose(huber=losses.Term(functools.partial(optax.losses.huber_loss, delta=0.5)))
    total, _ = huber(inputs)
    expected = optax.losses.huber_loss(inputs["pred"], inputs["target"], delta=0.5).mean()
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


def test_missing_input_names_term_and_input(loss, inputs):
    del inputs["logvar"]
    with pytest.raises(KeyError, match="term 'kl' needs input\\(s\\) \\['logvar'\\]"):
        loss(inputs)


def test_bad_declarations_fail_before_tracing():
    with pytest.raises(ValueError, match="term 'mae' has weight -1.0"):
        losses.compose(mae=losses.Term(losses.absolute_error, weight=-1.0))
    with pytest.raises(ValueError, match="term 'kl' has weight"):
        losses.compose(kl=losses.Term(losses.gaussian_kl, weight=lambda step: -0.1 + 0 * step))
    with pytest.raises(TypeError, match="term 'mae' must be a jaxguard.losses.Term"):
        losses.compose(mae=losses.absolute_error)
    with pytest.raises(TypeError, match="term 'mae' needs `inputs` as a non-empty tuple"):
        losses.compose(mae=losses.Term(losses.absolute_error, inputs="pred"))
    with pytest.raises(ValueError, match="give at least one term"):
        losses.compose()


def test_example_weights_need_per_example_values(inputs):
    loss = losses.compose(var=losses.Term(losses.variance_penalty, example_weights="weights"))
    with pytest.raises(ValueError, match="term 'var': `example_weights` is set"):
        loss(inputs)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_shapes_that_do_not_combine_give_one_line_naming_the_term(jit):
    """A term whose inputs do not broadcast: the term and the shapes, not JAX's bare error."""
    squared = losses.compose(sq=losses.Term(lambda p, t: (p - t) ** 2, inputs=("pred", "target")))
    call = jax.jit(lambda arrays: squared(arrays)) if jit else squared
    with pytest.raises(ValueError) as info:
        call({"pred": jnp.zeros((4, 3)), "target": jnp.zeros((4,))})
    assert str(info.value) == (
        "term 'sq': its inputs' shapes do not combine (`pred` (4, 3), `target` (4,)): "
        "Incompatible shapes for broadcasting: shapes=[(4, 3), (4,)]"
    )


def test_a_terms_own_error_passes_unchanged(inputs):
    loss = losses.compose(mae=losses.Term(losses.absolute_error))
    with pytest.raises(ValueError, match=r"^absolute_error: `pred` has shape \(4,\) but"):
        loss({**inputs, "pred": jnp.zeros(4)})
