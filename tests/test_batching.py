"""Batching: deterministic shuffles, dropped remainders, steps per epoch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxguard import batching
from jaxguard.config import ConfigError


def split(n):
    return {"x": np.arange(n) * 10, "y": np.arange(n)}


def test_batches_cover_the_split_in_order_without_a_seed():
    batches = list(batching.iterate_batches(split(10), 4, drop_last=False))
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["y"] for b in batches]), np.arange(10))


def test_a_seed_shuffles_the_same_way_every_time_and_keeps_rows_together():
    first = list(batching.iterate_batches(split(10), 4, seed=3, drop_last=True))
    again = list(batching.iterate_batches(split(10), 4, seed=3, drop_last=True))
    assert len(first) == 2
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a["y"], b["y"]) and np.array_equal(a["x"], a["y"] * 10)
    order = np.random.default_rng(3).permutation(10)[:8]
    assert np.array_equal(np.concatenate([b["y"] for b in first]), order)


def test_steps_per_epoch_caps_and_refuses_a_batch_larger_than_the_split():
    config = ConfigDict({"train": {"batch_size": 4, "steps_per_epoch": 0}})
    assert batching.steps_per_epoch(config, 10) == 2
    config.train.steps_per_epoch = 1
    assert batching.steps_per_epoch(config, 10) == 1
    config.train.batch_size = 11
    with pytest.raises(ConfigError, match=r"train.batch_size=11 is larger than the training split"):
        batching.steps_per_epoch(config, 10)


# A toy run on 4 (XLA host) devices with eval batches of 30: 64 examples are 30 + 30 + 4, and
# 30 is not a multiple of 4. Prints the test metrics as JSON.
_DEVICES_SCRIPT = """
import json, os, sys, tempfile
sys.path.insert(0, {tests!r})
from jaxguard import config as config_lib, trainer
from jaxguard.writers import Console
import io
config = config_lib.load_config(os.path.join({tests!r}, "toy_config.py"), ["eval.batch_size=30"])
summary = trainer.train_and_evaluate(
    config, tempfile.mkdtemp(), console=Console(io.StringIO(), progress=False)
)
print(json.dumps({{"devices": __import__("jax").device_count(), **summary["test"]}}))
"""


def _toy_test_metrics(devices: int) -> dict:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _DEVICES_SCRIPT.format(tests=tests)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_evaluation_on_4_devices_keeps_every_example_and_matches_one_device():
    one, four = _toy_test_metrics(1), _toy_test_metrics(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert one["count"] == four["count"] == 64  # No test example dropped or padded in.
    for key in ("r2", "mae", "rmse", "loss"):
        assert four[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_place_batch_splits_divisible_batches_and_replicates_the_rest():
    batch_sharding, replicated = batching.data_sharding()
    placed = batching.place_batch(split(4 * jax.device_count()), batch_sharding, replicated)
    assert placed["x"].sharding == batch_sharding
    if jax.device_count() > 1:
        odd = batching.place_batch(split(jax.device_count() + 1), batch_sharding, replicated)
        assert odd["x"].sharding == replicated


def test_place_rows_puts_the_chosen_rows_of_the_split_on_the_devices():
    batch_sharding, _ = batching.data_sharding()
    data = split(10 * jax.device_count())
    rows = np.random.default_rng(0).permutation(len(data["x"]))[: 4 * jax.device_count()]
    # One process holds every row; with several, each reads only its devices' rows.
    assert np.array_equal(batching.local_rows(batch_sharding, len(rows)), np.arange(len(rows)))
    placed = batching.place_rows(data, rows, batch_sharding)
    assert placed["x"].sharding == batch_sharding
    assert np.array_equal(np.asarray(placed["y"]), rows)
    assert np.array_equal(np.asarray(placed["x"]), rows * 10)


def test_batch_rows_are_the_rows_iterate_batches_takes():
    rows = list(batching.batch_rows(10, 4, seed=3, drop_last=False))
    batches = list(batching.iterate_batches(split(10), 4, seed=3, drop_last=False))
    assert [len(r) for r in rows] == [4, 4, 2]
    for index, batch in zip(rows, batches, strict=True):
        assert np.array_equal(batch["y"], index)
