"""`steps.make_term_gradients`: each loss term's share of the gradient, against plain jax.grad
on the toy task's linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_task
from flax import nnx

from jaxguard import losses
from jaxguard.steps import TrainState, make_term_gradients


def test_term_shares_match_separate_gradients():
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    loss_fn = losses.compose(
        mse=losses.Term(lambda p, t: (p - t) ** 2),
        mae=losses.Term(lambda p, t: jnp.abs(p - t), weight=0.5),
        off=losses.Term(lambda p, t: jnp.abs(p - t), weight=0.0),
    )
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        "target": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    }
    state = TrainState(jnp.zeros((), jnp.int32), params, model_state, None, jnp.zeros(()))
    result = make_term_gradients(graphdef, toy_task.TASK, loss_fn)(state, batch)

    def term(weights, fn, weight):
        pred = batch["x"] @ weights["kernel"][:, 0] + weights["bias"][0]
        return weight * jnp.mean(fn(pred, batch["target"]))

    plain = nnx.to_pure_dict(params)
    norms = {
        "mse": jnp.sqrt(
            sum(
                jnp.sum(g**2)
                for g in jax.tree.leaves(jax.grad(term)(plain, lambda p, t: (p - t) ** 2, 1.0))
            )
        ),
        "mae": jnp.sqrt(
            sum(
                jnp.sum(g**2)
                for g in jax.tree.leaves(jax.grad(term)(plain, lambda p, t: jnp.abs(p - t), 0.5))
            )
        ),
        "off": 0.0,
    }
    total = sum(norms.values())
    for name, norm in norms.items():
        assert float(result[f"terms/{name}/grad_share"]) == pytest.approx(
            float(norm / total), rel=1e-5
        )
    assert float(result["terms/mse/value"]) == pytest.approx(
        float(
            jnp.mean((batch["x"] @ plain["kernel"][:, 0] + plain["bias"][0] - batch["target"]) ** 2)
        ),
        rel=1e-5,
    )
    assert sum(float(result[f"terms/{n}/grad_share"]) for n in norms) == pytest.approx(1.0)
