"""The cVAE model (`model.py`) and its augmentation (`augment.py`): consistency and generation."""

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxguard import config as config_lib
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.augment import Augmentation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


def test_augmentation_keeps_fields_predictors_and_mass_consistent(setup, numpy_block_means):
    config = config_lib.load_config(
        SMALL,
        ["data.augment.flips=True", "data.augment.rotations=True", "data.augment.mixup_alpha=0.4"],
    )
    splits = TASK.make_splits(config)
    model = TASK.make_model(config, splits, nnx.Rngs(1, dropout=2))
    assert isinstance(model.augment, Augmentation) and model.augment.active
    batch = {key: values[:16] for key, values in splits["train"].items()}
    model.train()
    augment = nnx.jit(lambda model, x, y, coarse: model.augment(x, y, coarse))
    x, y, coarse = augment(model, batch["x"], batch["y"], batch["coarse_target"])
    assert not np.allclose(x, batch["x"])
    # The embedded predictor channel 0 is the coarse precipitation: it must stay the block mean.
    np.testing.assert_allclose(numpy_block_means(np.asarray(x), 4), coarse, atol=1e-4)
    np.testing.assert_allclose(y[..., 0], coarse, atol=1e-4)
    model.eval()
    same = model.augment(batch["x"], batch["y"], batch["coarse_target"])
    for a, b in zip(same, (batch["x"], batch["y"], batch["coarse_target"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_generation_draws_distinct_non_negative_members(setup, forward):
    config, splits, model, _, _ = setup
    model.eval()
    y = jnp.asarray(np.repeat(splits["test"]["y"][:2], 3, axis=0))
    noise = np.random.default_rng(0).standard_normal((6, config.model.d_z))
    noise = jnp.asarray(noise, jnp.float32)
    generate = nnx.jit(lambda model, y, noise: model.generate(y, noise))
    fields = np.asarray(generate(model, y, noise))
    assert fields.shape == (6, 16, 16) and np.all(fields >= 0)
    assert not np.allclose(fields[0], fields[1])
    # No noise decodes the prior mean with zero decoder noise: `generated` of the forward pass.
    prior_mean = nnx.jit(lambda model, y: model.generate(y))(model, y)
    batch = {"x": jnp.zeros((6, 16, 16)), "y": y, "coarse_target": jnp.zeros((6, 4, 4))}
    generated = forward(model, batch)["generated"]
    np.testing.assert_allclose(prior_mean, generated, rtol=1e-5, atol=1e-6)


def config_members(setup):
    return setup[0].guard.ensemble_spread.members


def test_forward_returns_the_target_the_model_saw_and_head_is_the_output_layer(setup, forward):
    _, _, model, _, batch = setup
    model.eval()
    outputs = forward(model, batch)
    np.testing.assert_array_equal(outputs["target"], batch["x"])  # no augmentation in eval
    np.testing.assert_array_equal(outputs["coarse_target"], batch["coarse_target"])
    inputs = TASK.loss_inputs(outputs, batch)
    expected = {"pred", "target", "mean", "logvar", "prior_mean", "prior_logvar", "coarse_target"}
    # The members the ensemble metrics (and, in train mode, the CRPS term) read.
    assert set(inputs) == expected | {"members"}
    members = config_members(setup)
    assert inputs["members"].shape == (batch["x"].shape[0], members, 16, 16)
    assert TASK.head(model) is model.head
