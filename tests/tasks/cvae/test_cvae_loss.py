"""The cVAE task's composite loss (`jaxguard/tasks/cvae/loss.py`) against float64 NumPy."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import losses
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae import data as data_lib
from jaxguard.tasks.cvae import loss as loss_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "configs", "cvae.py")
SMALL = CONFIG + ":small"
THRESHOLD = 50.0


def test_logged_terms_sum_to_the_total_and_match_numpy(
    setup, forward, numpy_kl_per_dim, numpy_extreme_mae, numpy_block_means
):
    config, _, model, loss_fn, batch = setup
    model.eval()
    outputs = forward(model, batch)
    step = 7  # Mid warm-up: 2 epochs x 10 steps.
    total, terms = loss_fn(TASK.loss_inputs(outputs, batch), step=step)
    names = ("mae", "crps", "extreme", "kl", "mass")
    assert set(terms) == {f"{n}{s}" for n in names for s in ("", "/weight", "/weighted")} | {
        "extreme/reference",  # The plain extreme MAE: the term's effective weight is checked.
        "extreme/effective_weight",
    }
    assert float(total) == pytest.approx(sum(float(terms[f"{n}/weighted"]) for n in names))

    pred = np.asarray(outputs["pred"], np.float64)
    target = np.asarray(batch["x"], np.float64)
    kl = numpy_kl_per_dim(
        outputs["mean"], outputs["logvar"], outputs["prior_mean"], outputs["prior_logvar"]
    )
    factor = config.data.factor
    members = np.asarray(outputs["members"], np.float64)
    count = members.shape[1]
    pairs = np.abs(members[:, :, None] - members[:, None, :]).sum(axis=(1, 2))
    fair_crps = np.abs(members - target[:, None]).mean(axis=1) - pairs / (2 * count * (count - 1))
    expected = {
        "mae": np.abs(pred - target).mean(),
        "crps": fair_crps.mean(),
        "extreme": numpy_extreme_mae(pred, target),
        "kl": kl.sum(axis=1).mean(),
        "mass": np.mean(
            np.abs(numpy_block_means(pred, factor) - numpy_block_means(target, factor))
        ),
    }
    weights = {"mae": 1.0, "crps": 2.0, "extreme": 5.0, "kl": 0.01 * step / 20, "mass": 0.01}
    for name in names:
        assert float(terms[name]) == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
        assert float(terms[f"{name}/weight"]) == pytest.approx(weights[name], rel=1e-6), name
    assert expected["extreme"] > 0  # the batch holds extreme days
    # The fixed term weighs its plain reference by exactly lambda_ext.
    assert float(terms["extreme/reference"]) == pytest.approx(expected["extreme"], rel=1e-4)
    assert float(terms["extreme/effective_weight"]) == pytest.approx(5.0, rel=1e-5)


def test_beta_reaches_its_target_at_the_end_of_the_warmup(setup):
    _, _, _, loss_fn, _ = setup
    weights = [float(loss_fn.weights(step)["kl"]) for step in (0, 10, 20, 200)]
    assert weights == pytest.approx([0.0, 0.005, 0.01, 0.01])


def test_mass_conservation_is_zero_for_a_field_that_conserves_mass(rng, numpy_block_means):
    coarse = rng.gamma(0.7, 3.0, size=(5, 4, 4)).astype(np.float32)
    # Any detail whose 4x4 block means are zero leaves the mass unchanged.
    detail = rng.normal(size=(5, 16, 16))
    detail -= np.kron(numpy_block_means(detail, 4), np.ones((4, 4)))
    fine = (np.kron(coarse, np.ones((4, 4))) + 0.1 * detail).astype(np.float32)
    np.testing.assert_allclose(data_lib.coarsen(fine, 4), coarse, atol=1e-5)
    conserving = losses.mass_conservation(jnp.asarray(fine), jnp.asarray(coarse), factor=4)
    np.testing.assert_allclose(conserving, 0.0, atol=1e-5)
    shifted = losses.mass_conservation(jnp.asarray(fine + 1.0), jnp.asarray(coarse), factor=4)
    np.testing.assert_allclose(shifted, 1.0, rtol=1e-5)


def test_batch_without_extremes_gives_finite_loss_and_gradient(setup):
    config, splits, model, loss_fn, _ = setup
    model.train()
    train = splits["train"]
    rows = np.flatnonzero(train["has_extreme"] == 0)[:8]
    batch = {key: values[rows] for key, values in train.items()}
    bug_config = config_lib.load_config(SMALL, ["loss.extreme_ratio_scaling=True"])
    for fn in (loss_fn, TASK.make_loss(bug_config, splits, steps_per_epoch=10)):

        @nnx.jit
        def value_and_grad(model, batch, fn=fn):
            def objective(model):
                return fn(TASK.loss_inputs(TASK.forward(model, batch), batch), step=5)

            return nnx.value_and_grad(objective, has_aux=True)(model)

        (total, terms), grads = value_and_grad(model, batch)
        extreme = "extreme" if "extreme" in terms else "extreme_ratio_bug"
        assert float(terms[extreme]) == 0.0
        assert np.isfinite(float(total))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert config.loss.lambda_ext == 5.0


def test_ratio_bug_term_reproduces_the_seed_scaling(rng, numpy_extreme_mae):
    target = rng.gamma(0.6, 4.0, size=(10, 8, 8)).astype(np.float32)
    target = np.minimum(target, 40.0)
    target[2, 1:3, 1:3] = 80.0
    target[7, 5, 5] = 120.0
    pred = (target + rng.normal(0.0, 3.0, size=target.shape)).astype(np.float32)
    buggy = loss_lib.seed002_ratio_scaled_extreme_mae(
        jnp.asarray(pred), jnp.asarray(target), threshold=THRESHOLD
    )
    # Seed 002: extreme_sample_ratio = len(mae_ext_per_sample) / batch_size = 2 / 10.
    assert float(buggy) == pytest.approx(numpy_extreme_mae(pred, target) * 2 / 10, rel=1e-5)
    config = config_lib.load_config(CONFIG + ":ratio_bug")
    assert config.loss.extreme_ratio_scaling and config.loss.lambda_ext == 5.0
    assert loss_lib.extreme_term_name(config) == "extreme_ratio_bug"
