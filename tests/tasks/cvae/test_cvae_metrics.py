"""The cVAE task's streaming metrics (`jaxguard/tasks/cvae/metrics.py`) against float64 NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.metrics import CVAEMetrics

THRESHOLD = 50.0


def test_kl_per_dimension_sums_to_the_total(setup, forward, update_metrics, numpy_kl_per_dim):
    config, splits, model, _, _ = setup
    model.eval()
    metrics = TASK.empty_metrics(config)
    val = splits["val"]
    batches = [{k: v[s : s + 16] for k, v in val.items()} for s in (0, 16, 32)]
    outputs = [forward(model, batch) for batch in batches]
    for batch, out in zip(batches, outputs, strict=True):
        metrics = update_metrics(metrics, out, batch)
    result = metrics.compute()
    per_dim = [result[f"kl_dim_{i:02d}"] for i in range(config.model.d_z)]
    assert sum(per_dim) == pytest.approx(result["kl"], rel=1e-9)
    kl = np.concatenate(
        [
            numpy_kl_per_dim(o["mean"], o["logvar"], o["prior_mean"], o["prior_logvar"])
            for o in outputs
        ]
    )
    np.testing.assert_allclose(per_dim, kl.mean(axis=0), rtol=1e-4, atol=1e-7)


def test_empty_metrics_take_their_settings_from_the_config(setup):
    config = setup[0]
    metrics = TASK.empty_metrics(config)
    assert metrics.activity_threshold == config.guard.active_units.activity_threshold
    assert (metrics.lambda_base, metrics.lambda_ext) == (1.0, 5.0)
    assert metrics.factor == config.data.factor and metrics.kl_sum.shape == (config.model.d_z,)


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
    return CVAEMetrics.empty(
        threshold=THRESHOLD,
        d_z=d_z,
        factor=4,
        lambda_base=1.0,
        lambda_ext=5.0,
        activity_threshold=0.01,
    )


def test_active_units_count_posterior_means_that_vary(rng, update_metrics):
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
        whole = update_metrics(whole, out, batch)
        halves[part] = update_metrics(halves[part], out, batch)
    result = whole.compute()
    assert result["active_units"] == 2.0
    merged = halves[0].merge(halves[1]).compute()
    for key in ("active_units", "kl", "mae_all", "rec_loss"):
        assert merged[key] == pytest.approx(result[key], rel=1e-5, nan_ok=True)
    expected_kl = 0.5 * np.mean(np.sum((mean - prior_mean) ** 2, axis=1))
    assert result["kl"] == pytest.approx(expected_kl, rel=1e-4)


def test_reconstruction_loss_tail_bias_and_peak_ratio_match_numpy(
    rng, update_metrics, numpy_extreme_mae
):
    metrics = _empty_metrics(d_z=2)
    target = rng.gamma(0.6, 4.0, size=(12, 8, 8)).astype(np.float32)
    target = np.minimum(target, 40.0)
    target[3, :2, :2] = 90.0
    target[9, 4, 4] = 70.0
    pred = (target + rng.normal(0.0, 2.0, size=target.shape)).astype(np.float32)
    zeros = np.zeros((6, 2), np.float32)
    for rows in (slice(0, 6), slice(6, 12)):
        out, batch = _outputs(zeros, zeros, target[rows], pred[rows])
        metrics = update_metrics(metrics, out, batch)
    result = metrics.compute()
    mae = np.abs(pred.astype(np.float64) - target).mean()
    assert result["extreme_mae"] == pytest.approx(numpy_extreme_mae(pred, target), rel=1e-5)
    expected = mae + 5.0 * numpy_extreme_mae(pred, target)
    assert result["rec_loss"] == pytest.approx(expected, rel=1e-5)
    tail = target > THRESHOLD
    assert result["bias_tail"] == pytest.approx(np.mean(pred[tail] - target[tail]), rel=1e-5)
    heavy = [3, 9]
    peaks = pred[heavy].max(axis=(1, 2)).sum() / target[heavy].max(axis=(1, 2)).sum()
    assert result["peak_ratio"] == pytest.approx(peaks, rel=1e-6)
