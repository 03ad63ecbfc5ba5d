"""The cVAE task's loss, metrics, guards and model against float64 NumPy references."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import losses
from jaxguard.tasks.cvae import data as data_lib
from jaxguard.tasks.cvae import task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "configs", "cvae.py")
SMALL = CONFIG + ":small"
THRESHOLD = 50.0

# Compiled once and shared: eager execution would compile every layer's ops one by one.
_forward = nnx.jit(task.forward)
_update_metrics = jax.jit(task.update_metrics)


@pytest.fixture(scope="module")
def setup():
    """The small config's splits, a model in train mode, the loss and one batch with extremes."""
    config = config_lib.load_config(SMALL)
    splits = task.make_splits(config)
    model = task.make_model(config, splits, nnx.Rngs(0, dropout=1))
    loss_fn = task.make_loss(config, splits, steps_per_epoch=10)
    train = splits["train"]
    rows = np.concatenate([np.flatnonzero(train["has_extreme"])[:2], np.arange(6)])
    batch = {key: values[rows] for key, values in train.items()}
    return config, splits, model, loss_fn, batch


def _numpy_kl_per_dim(mean, logvar, prior_mean, prior_logvar):
    mean, logvar, prior_mean, prior_logvar = (
        np.asarray(a, np.float64) for a in (mean, logvar, prior_mean, prior_logvar)
    )
    return 0.5 * (
        np.exp(logvar - prior_logvar)
        + (mean - prior_mean) ** 2 / np.exp(prior_logvar)
        - 1.0
        - (logvar - prior_logvar)
    )


def _numpy_extreme_mae(pred, target, threshold=THRESHOLD):
    per_sample = [
        np.abs(p - t)[t > threshold].mean()
        for p, t in zip(pred, target, strict=True)
        if (t > threshold).any()
    ]
    return float(np.mean(per_sample)) if per_sample else 0.0


def _numpy_block_means(field, factor):
    n, h, w = field.shape
    return field.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def test_logged_terms_sum_to_the_total_and_match_numpy(setup):
    config, _, model, loss_fn, batch = setup
    model.eval()
    outputs = _forward(model, batch)
    step = 7  # Mid warm-up: 2 epochs x 10 steps.
    total, terms = loss_fn(task.loss_inputs(outputs, batch), step=step)
    names = ("mae", "extreme", "kl", "mass")
    assert set(terms) == {f"{n}{s}" for n in names for s in ("", "/weight", "/weighted")}
    assert float(total) == pytest.approx(sum(float(terms[f"{n}/weighted"]) for n in names))

    pred = np.asarray(outputs["pred"], np.float64)
    target = np.asarray(batch["x"], np.float64)
    kl = _numpy_kl_per_dim(
        outputs["mean"], outputs["logvar"], outputs["prior_mean"], outputs["prior_logvar"]
    )
    factor = config.data.factor
    expected = {
        "mae": np.abs(pred - target).mean(),
        "extreme": _numpy_extreme_mae(pred, target),
        "kl": kl.sum(axis=1).mean(),
        "mass": np.mean(
            np.abs(_numpy_block_means(pred, factor) - _numpy_block_means(target, factor))
        ),
    }
    weights = {"mae": 1.0, "extreme": 5.0, "kl": 0.01 * step / 20, "mass": 0.01}
    for name in names:
        assert float(terms[name]) == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
        assert float(terms[f"{name}/weight"]) == pytest.approx(weights[name], rel=1e-6), name
    assert expected["extreme"] > 0  # the batch holds extreme days


def test_beta_reaches_its_target_at_the_end_of_the_warmup(setup):
    _, _, _, loss_fn, _ = setup
    weights = [float(loss_fn.weights(step)["kl"]) for step in (0, 10, 20, 200)]
    assert weights == pytest.approx([0.0, 0.005, 0.01, 0.01])


def test_kl_per_dimension_sums_to_the_total(setup):
    config, splits, model, _, _ = setup
    model.eval()
    metrics = task.empty_metrics(config)
    val = splits["val"]
    batches = [{k: v[s : s + 16] for k, v in val.items()} for s in (0, 16, 32)]
    outputs = [_forward(model, batch) for batch in batches]
    for batch, out in zip(batches, outputs, strict=True):
        metrics = _update_metrics(metrics, out, batch)
    result = metrics.compute()
    per_dim = [result[f"kl_dim_{i:02d}"] for i in range(config.model.d_z)]
    assert sum(per_dim) == pytest.approx(result["kl"], rel=1e-9)
    kl = np.concatenate(
        [
            _numpy_kl_per_dim(o["mean"], o["logvar"], o["prior_mean"], o["prior_logvar"])
            for o in outputs
        ]
    )
    np.testing.assert_allclose(per_dim, kl.mean(axis=0), rtol=1e-4, atol=1e-7)


def test_mass_conservation_is_zero_for_a_field_that_conserves_mass(rng):
    coarse = rng.gamma(0.7, 3.0, size=(5, 4, 4)).astype(np.float32)
    # Any detail whose 4x4 block means are zero leaves the mass unchanged.
    detail = rng.normal(size=(5, 16, 16))
    detail -= np.kron(_numpy_block_means(detail, 4), np.ones((4, 4)))
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
    for fn in (loss_fn, task.make_loss(bug_config, splits, steps_per_epoch=10)):

        @nnx.jit
        def value_and_grad(model, batch, fn=fn):
            def objective(model):
                return fn(task.loss_inputs(task.forward(model, batch), batch), step=5)

            return nnx.value_and_grad(objective, has_aux=True)(model)

        (total, terms), grads = value_and_grad(model, batch)
        extreme = "extreme" if "extreme" in terms else "extreme_ratio_bug"
        assert float(terms[extreme]) == 0.0
        assert np.isfinite(float(total))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert config.loss.lambda_ext == 5.0


def test_ratio_bug_term_reproduces_the_seed_scaling(rng):
    target = rng.gamma(0.6, 4.0, size=(10, 8, 8)).astype(np.float32)
    target = np.minimum(target, 40.0)
    target[2, 1:3, 1:3] = 80.0
    target[7, 5, 5] = 120.0
    pred = (target + rng.normal(0.0, 3.0, size=target.shape)).astype(np.float32)
    buggy = task.seed002_ratio_scaled_extreme_mae(
        jnp.asarray(pred), jnp.asarray(target), threshold=THRESHOLD
    )
    # Seed 002: extreme_sample_ratio = len(mae_ext_per_sample) / batch_size = 2 / 10.
    assert float(buggy) == pytest.approx(_numpy_extreme_mae(pred, target) * 2 / 10, rel=1e-5)
    config = config_lib.load_config(CONFIG + ":ratio_bug")
    assert config.loss.extreme_ratio_scaling and config.loss.lambda_ext == 5.0
    assert task.extreme_term_name(config) == "extreme_ratio_bug"


def _outputs(mean, prior_mean, target, pred=None):
    batch = mean.shape[0]
    zeros = np.zeros_like(mean)
    pred = target if pred is None else pred
    return {
        "pred": jnp.asarray(pred),
        "generated": jnp.asarray(pred),
        "mean": jnp.asarray(mean),
        "logvar": jnp.asarray(zeros),
        "prior_mean": jnp.asarray(prior_mean),
        "prior_logvar": jnp.asarray(zeros),
    }, {"x": jnp.asarray(target), "coarse_target": jnp.asarray(np.zeros((batch, 2, 2), np.float32))}


def _empty_metrics(d_z):
    return task.CVAEMetrics.empty(
        threshold=THRESHOLD,
        d_z=d_z,
        factor=4,
        lambda_base=1.0,
        lambda_ext=5.0,
        activity_threshold=0.01,
    )


def test_active_units_count_posterior_means_that_vary(rng):
    metrics = _empty_metrics(d_z=4)
    mean = np.zeros((40, 4), np.float32)
    mean[:, 0] = rng.normal(0.0, 1.0, 40)  # active
    mean[:, 1] = rng.normal(0.0, 0.2, 40)  # variance 0.04: active
    mean[:, 2] = rng.normal(0.0, 0.05, 40)  # variance 0.0025: collapsed
    prior_mean = np.zeros_like(mean)
    prior_mean[:, 3] = rng.normal(0.0, 1.0, 40)
    mean[:, 3] = prior_mean[:, 3]  # follows the conditional prior exactly: collapsed
    target = np.zeros((40, 8, 8), np.float32)
    whole = metrics
    halves = [metrics, metrics]
    for part, rows in enumerate((slice(0, 25), slice(25, 40))):
        out, batch = _outputs(mean[rows], prior_mean[rows], target[rows])
        whole = _update_metrics(whole, out, batch)
        halves[part] = _update_metrics(halves[part], out, batch)
    result = whole.compute()
    assert result["active_units"] == 2.0
    merged = halves[0].merge(halves[1]).compute()
    for key in ("active_units", "kl", "mae_all", "rec_loss"):
        assert merged[key] == pytest.approx(result[key], rel=1e-5, nan_ok=True)
    expected_kl = 0.5 * np.mean(np.sum((mean - prior_mean) ** 2, axis=1))
    assert result["kl"] == pytest.approx(expected_kl, rel=1e-4)


def test_reconstruction_loss_tail_bias_and_peak_ratio_match_numpy(rng):
    metrics = _empty_metrics(d_z=2)
    target = rng.gamma(0.6, 4.0, size=(12, 8, 8)).astype(np.float32)
    target = np.minimum(target, 40.0)
    target[3, :2, :2] = 90.0
    target[9, 4, 4] = 70.0
    pred = (target + rng.normal(0.0, 2.0, size=target.shape)).astype(np.float32)
    zeros = np.zeros((6, 2), np.float32)
    for rows in (slice(0, 6), slice(6, 12)):
        out, batch = _outputs(zeros, zeros, target[rows], pred[rows])
        metrics = _update_metrics(metrics, out, batch)
    result = metrics.compute()
    mae = np.abs(pred.astype(np.float64) - target).mean()
    assert result["extreme_mae"] == pytest.approx(_numpy_extreme_mae(pred, target), rel=1e-5)
    expected = mae + 5.0 * _numpy_extreme_mae(pred, target)
    assert result["rec_loss"] == pytest.approx(expected, rel=1e-5)
    tail = target > THRESHOLD
    assert result["bias_tail"] == pytest.approx(np.mean(pred[tail] - target[tail]), rel=1e-5)
    heavy = [3, 9]
    peaks = pred[heavy].max(axis=(1, 2)).sum() / target[heavy].max(axis=(1, 2)).sum()
    assert result["peak_ratio"] == pytest.approx(peaks, rel=1e-6)


def test_active_units_guard_warns_once_and_reports_recovery():
    guard = task.ActiveUnitsGuard(d_z=16, min_fraction=0.25, activity_threshold=0.01, start_epoch=1)
    assert guard.update(0, {"active_units": 0.0, "kl": 0.0}) is None  # before start_epoch
    event = guard.update(1, {"active_units": 3.0, "kl": 0.02})
    assert event.level == "warn" and event.guard == "posterior_collapse"
    assert "3 of 16 latent units" in event.message
    assert guard.update(2, {"active_units": 2.0, "kl": 0.01}) is None
    restored = task.ActiveUnitsGuard(
        d_z=16, min_fraction=0.25, activity_threshold=0.01, start_epoch=1
    )
    restored.load_state_dict(guard.state_dict())
    assert restored.update(3, {"active_units": 4.0, "kl": 0.5}).level == "info"


def test_volatility_guard_warns_on_a_jump_of_the_reconstruction_loss():
    guard = task.VolatilityGuard(warn_change=1.0)
    # Seed 002's figures: val_L_rec 2.1301 at epoch 5, 6.5455 later.
    assert guard.update(5, {"rec_loss": 2.1301}) is None
    assert guard.update(6, {"rec_loss": 2.5}) is None
    # A resumed run restores the state from the checkpoint's JSON metadata.
    saved = json.loads(json.dumps(guard.state_dict()))
    guard = task.VolatilityGuard(warn_change=1.0)
    guard.load_state_dict(saved)
    event = guard.update(7, {"rec_loss": 6.5455})
    assert event.level == "warn" and "+162%" in event.message and "epoch 6 (2.5)" in event.message


def test_warmup_warning_when_early_stopping_can_end_the_run_first():
    before_fix = config_lib.load_config(CONFIG + ":before_fix")
    splits = task.make_splits(config_lib.load_config(SMALL))
    lines = task.startup_lines(before_fix, splits)
    warnings = [line for line in lines if line.startswith("warning: KL weight warm-up")]
    assert len(warnings) == 1 and "epoch 20" in warnings[0]
    default = config_lib.load_config(CONFIG)
    assert not any("warm-up" in line for line in task.startup_lines(default, splits))


def test_augmentation_keeps_fields_predictors_and_mass_consistent(setup):
    config = config_lib.load_config(
        SMALL,
        ["data.augment.flips=True", "data.augment.rotations=True", "data.augment.mixup_alpha=0.4"],
    )
    splits = task.make_splits(config)
    model = task.make_model(config, splits, nnx.Rngs(1, dropout=2))
    batch = {key: values[:16] for key, values in splits["train"].items()}
    model.train()
    augment = nnx.jit(lambda model, x, y, coarse: model.augment(x, y, coarse))
    x, y, coarse = augment(model, batch["x"], batch["y"], batch["coarse_target"])
    assert not np.allclose(x, batch["x"])
    # The embedded predictor channel 0 is the coarse precipitation: it must stay the block mean.
    np.testing.assert_allclose(_numpy_block_means(np.asarray(x), 4), coarse, atol=1e-4)
    np.testing.assert_allclose(y[..., 0], coarse, atol=1e-4)
    model.eval()
    same = model.augment(batch["x"], batch["y"], batch["coarse_target"])
    for a, b in zip(same, (batch["x"], batch["y"], batch["coarse_target"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_generation_draws_distinct_non_negative_members(setup):
    config, splits, model, _, _ = setup
    model.eval()
    y = jnp.asarray(np.repeat(splits["test"]["y"][:2], 3, axis=0))
    noise = np.random.default_rng(0).standard_normal((6, config.model.d_z))
    noise = jnp.asarray(noise, jnp.float32)
    generate = nnx.jit(lambda model, y, noise: model.generate(y, noise))
    fields = np.asarray(generate(model, y, noise))
    assert fields.shape == (6, 16, 16) and np.all(fields >= 0)
    assert not np.allclose(fields[0], fields[1])
    # Zero noise decodes the prior mean, which is what `generated` of the forward pass holds.
    prior_mean = generate(model, y, jnp.zeros_like(noise))
    batch = {"x": jnp.zeros((6, 16, 16)), "y": y, "coarse_target": jnp.zeros((6, 4, 4))}
    generated = _forward(model, batch)["generated"]
    np.testing.assert_allclose(prior_mean, generated, rtol=1e-5, atol=1e-6)
