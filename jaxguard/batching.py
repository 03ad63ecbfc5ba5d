"""Batches of a split and where they live: the harness's lowest layer, usable on its own.

A split is `{name: np.ndarray [N, ...]}` with the same N for every array.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from jaxguard.config import ConfigError

Batch = Mapping[str, np.ndarray]
Split = Mapping[str, np.ndarray]


def split_size(split: Split) -> int:
    """N, the number of examples of `split`."""
    return len(next(iter(split.values())))


def iterate_batches(
    split: Split, batch_size: int, *, seed: int | None = None, drop_last: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `split`, shuffled by `np.random.default_rng(seed)` when a seed is given.

    The order depends only on the seed, so a resumed run sees the same batches.
    """
    size = split_size(split)
    order = np.arange(size) if seed is None else np.random.default_rng(seed).permutation(size)
    stop = size - size % batch_size if drop_last else size
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield {key: values[index] for key, values in split.items()}


def epoch_seed(config: ConfigDict, epoch: int) -> int:
    """The shuffling seed of the training batches of `epoch`."""
    return config.seed * 100_003 + epoch


def steps_per_epoch(config: ConfigDict, train_size: int) -> int:
    """Full training batches per epoch, capped by `train.steps_per_epoch` when that is set."""
    full = train_size // config.train.batch_size
    if full == 0:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({train_size} examples)"
        )
    return min(full, config.train.steps_per_epoch) if config.train.steps_per_epoch else full


def data_sharding() -> tuple[NamedSharding, NamedSharding]:
    """`(batch, replicated)`: batches split along their leading axis over every device."""
    # Auto axes: with make_mesh's default Explicit axes, a scatter whose indices come from the
    # batch (Histogram.update in PointingMetrics) fails outside a mesh context.
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def place_batch(batch: Batch, batch_sharding: NamedSharding, replicated: NamedSharding) -> Batch:
    """Puts `batch` on the devices: split along its leading axis over them when its size is a
    multiple of their number, else whole on every device.

    Training batches always split (their size is checked at start-up). An evaluation's
    last, smaller batch, or an eval batch size the device count does not divide, is
    replicated instead: every device computes the same outputs, so no example is dropped and
    the metrics equal a one-device run's, at the cost of doing that batch once per device.
    """
    divisible = split_size(batch) % len(batch_sharding.mesh.devices.flat) == 0
    return jax.device_put(dict(batch), batch_sharding if divisible else replicated)
