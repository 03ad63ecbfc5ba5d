"""Batches of a split and where they live: the harness's lowest layer, usable on its own.

A split is `{name: np.ndarray [N, ...]}` with the same N for every array. Every process of a
multi-process run holds the whole split (the embedded generators are deterministic) and walks
the same global order of batches; each puts on its devices only its share of each batch.
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
    for index in batch_rows(split_size(split), batch_size, seed=seed, drop_last=drop_last):
        yield {key: values[index] for key, values in split.items()}


def batch_rows(
    size: int, batch_size: int, *, seed: int | None = None, drop_last: bool
) -> Iterator[np.ndarray]:
    """The row indices `[batch_size]` (the last one shorter unless dropped) of each batch.

    The same on every process and for any number of processes: the global batch order.
    """
    order = np.arange(size) if seed is None else np.random.default_rng(seed).permutation(size)
    stop = size - size % batch_size if drop_last else size
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


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


def local_rows(batch_sharding: NamedSharding, size: int) -> np.ndarray:
    """Which rows of a `[size, ...]` batch split by `batch_sharding` this process's devices hold.

    In the order `jax.make_array_from_process_local_data` expects them: the shards' rows by
    ascending start. With one process, every row, in order.
    """
    shards = batch_sharding.addressable_devices_indices_map((size,)).values()
    starts = sorted({index[0].start or 0 for index in shards})
    per_device = size // len(batch_sharding.mesh.devices.flat)
    return np.concatenate([np.arange(start, start + per_device) for start in starts])


def place_rows(split: Split, rows: np.ndarray, batch_sharding: NamedSharding) -> Batch:
    """The batch `split[rows]` split over the devices, reading only this process's rows.

    `len(rows)` must be a multiple of the device count (training batches are).
    """
    mine = rows[local_rows(batch_sharding, len(rows))]
    return {
        key: jax.make_array_from_process_local_data(
            batch_sharding, values[mine], (len(rows), *values.shape[1:])
        )
        for key, values in split.items()
    }


def place_batch(batch: Batch, batch_sharding: NamedSharding, replicated: NamedSharding) -> Batch:
    """Puts `batch` on the devices: split along its leading axis over them when its size is a
    multiple of their number (each process transferring only its rows), else whole on every
    device.

    Training batches always split (their size is checked at start-up). An evaluation's
    last, smaller batch, or an eval batch size the device count does not divide, is
    replicated instead: every device computes the same outputs, so no example is dropped and
    the metrics equal a one-device run's, at the cost of doing that batch once per device.
    """
    size = split_size(batch)
    if size % len(batch_sharding.mesh.devices.flat):
        return jax.device_put(dict(batch), replicated)
    return place_rows(batch, np.arange(size), batch_sharding)
