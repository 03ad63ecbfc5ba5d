"""Fixtures shared by the cVAE tests: the small config's data and model, compiled once.

Compiling the model's forward pass dominates these tests on a CPU, so the jitted hooks and
the model are session-scoped and shared by the test modules. The float64 NumPy references
of the loss and metric figures are fixtures too (test modules cannot import each other).
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard.tasks.cvae import TASK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


@pytest.fixture(scope="session")
def forward():
    """`TASK.forward` under `nnx.jit`: eager execution would compile every op one by one."""
    return nnx.jit(TASK.forward)


@pytest.fixture(scope="session")
def update_metrics():
    """`TASK.update_metrics` under `jax.jit`."""
    return jax.jit(TASK.update_metrics)


@pytest.fixture(scope="session")
def setup():
    """The small config's splits, a model in train mode, the loss and one batch with extremes."""
    config = config_lib.load_config(SMALL)
    splits = TASK.make_splits(config)
    model = TASK.make_model(config, splits, nnx.Rngs(0, dropout=1))
    loss_fn = TASK.make_loss(config, splits, steps_per_epoch=10)
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


def _numpy_extreme_mae(pred, target, threshold=50.0):
    per_sample = [
        np.abs(p - t)[t > threshold].mean()
        for p, t in zip(pred, target, strict=True)
        if (t > threshold).any()
    ]
    return float(np.mean(per_sample)) if per_sample else 0.0


def _numpy_block_means(field, factor):
    n, h, w = field.shape
    return field.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


@pytest.fixture
def numpy_kl_per_dim():
    """`(mean, logvar, prior_mean, prior_logvar) -> [B, d_z]` KL per dimension, float64."""
    return _numpy_kl_per_dim


@pytest.fixture
def numpy_extreme_mae():
    """`(pred, target, threshold=50) -> float`: per-sample tail MAE averaged over the samples
    that hold extreme pixels (0 when none do)."""
    return _numpy_extreme_mae


@pytest.fixture
def numpy_block_means():
    """`(field [n, H, W], factor) -> [n, H / factor, W / factor]` block means."""
    return _numpy_block_means


def _write_npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _rain_arrays(n=20):
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 3.0, size=(n, 8, 8)).astype(np.float32)
    y = rng.normal(size=(n, 2, 2, 2)).astype(np.float32)
    return x, y


@pytest.fixture
def write_npz():
    """`(tmp_path, name="data.npz", **arrays) -> path` of a user `.npz` data file."""
    return _write_npz


@pytest.fixture
def rain_arrays():
    """`(n=20) -> (x [n, 8, 8], y [n, 2, 2, 2])`: small valid user data, float32."""
    return _rain_arrays
