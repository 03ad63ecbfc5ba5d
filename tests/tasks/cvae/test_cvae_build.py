"""`jaxguard/tasks/cvae/build.py`: the members a validation day gets, and the eval loss."""

import os

import jax.numpy as jnp
from flax import nnx

from jaxguard import config as config_lib
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.build import ensemble_members

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


def test_the_crps_term_gets_its_members_in_eval_mode_with_the_ensemble_guard_off():
    config = config_lib.load_config(SMALL, ["guard.ensemble_spread.enabled=False"])
    assert ensemble_members(config) == config.loss.crps_members == 2
    mean_only = config_lib.load_config(
        SMALL, ["guard.ensemble_spread.enabled=False", "loss.lambda_crps=0.0"]
    )
    assert ensemble_members(mean_only) == 0
    assert ensemble_members(config_lib.load_config(SMALL)) == config.guard.ensemble_spread.members
    splits = TASK.make_splits(config)
    model = TASK.make_model(config, splits, nnx.Rngs(0))
    model.eval()
    batch = {key: jnp.asarray(value[:4]) for key, value in splits["val"].items()}
    outputs = TASK.forward(model, batch)
    loss_fn = TASK.make_loss(config, splits, 6)
    total, terms = loss_fn(TASK.loss_inputs(outputs, batch))
    assert outputs["members"].shape[:2] == (4, 2)
    assert bool(jnp.isfinite(total)) and float(terms["crps"]) > 0
