"""Batching: deterministic shuffles, dropped remainders, steps per epoch."""

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
