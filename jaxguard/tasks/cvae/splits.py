"""The cVAE task's splits: the raw data read or generated once, and what the task adds to it.

`raw_splits` gives `{"train"|"val"|"test": {"x", "y"}}` as `data.py` produces them, cached per
data config and seed, and `coordinates` their time labels and grid axes; `make_splits` adds
the coarse mass targets and the extreme-day flags and oversamples the extreme training days.
`extreme_threshold` is the one place the extreme threshold is decided (a fixed value or a
quantile of the training pixels).
"""

from __future__ import annotations

import functools
import json

import numpy as np
from ml_collections import ConfigDict

from jaxguard.config import ConfigError
from jaxguard.tasks.cvae import data as data_lib


def names_of(data: ConfigDict | dict) -> data_lib.Names:
    """The variable and dim names of a netCDF or zarr source, from `config.data`."""
    return data_lib.Names(
        field=data["field_var"],
        predictors=tuple(data["predictor_vars"]),
        time=data["time_dim"],
        fine=tuple(data["fine_dims"]),
        coarse=tuple(data["coarse_dims"]),
    )


@functools.lru_cache(maxsize=4)
def _raw_data_cached(
    data_json: str, seed: int
) -> tuple[dict[str, dict[str, np.ndarray]], data_lib.Coordinates]:
    d = json.loads(data_json)
    names = names_of(d)
    if d["source"]:
        return data_lib.load_source(
            d["source"],
            val_fraction=d["val_fraction"],
            test_fraction=d["test_fraction"],
            names=names,
        )
    splits = data_lib.generate(
        num_train=d["num_train"],
        num_val=d["num_val"],
        num_test=d["num_test"],
        fine_size=d["fine_size"],
        factor=d["factor"],
        heavy_day_fraction=d["heavy_day_fraction"],
        heavy_peak_min=d["heavy_peak_min"],
        seed=seed,
    )
    return splits, data_lib.index_coordinates(splits, names)


def raw_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """The splits before any task-side processing; read or generated once per process.

    Returns:
      `{"train"|"val"|"test": {"x": [N, H, W], "y": [N, h, w, C]}}` (float32), the training
      split without oversampling. The arrays are shared between callers: do not modify them.
    """
    return _raw_data_cached(config.data.to_json(sort_keys=True), config.seed)[0]


def coordinates(config: ConfigDict) -> data_lib.Coordinates:
    """The time labels of each split and the grids' axes (indices for embedded and .npz data)."""
    return _raw_data_cached(config.data.to_json(sort_keys=True), config.seed)[1]


def factor_of(config: ConfigDict) -> int:
    """Fine pixels per coarse cell along each axis, `H / h`, from the data."""
    train = raw_splits(config)["train"]
    return train["x"].shape[1] // train["y"].shape[1]


def extreme_threshold(config: ConfigDict) -> float:
    """`data.extreme_threshold`, or the `data.extreme_quantile` of the training pixels if set."""
    if config.data.extreme_quantile is None:
        return float(config.data.extreme_threshold)
    train_x = raw_splits(config)["train"]["x"]
    return float(np.quantile(train_x, config.data.extreme_quantile))


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """Embedded or user data, with the coarse mass targets and the extreme-day flags.

    Each split holds `x` `[N, H, W]`, `y` `[N, h, w, C]`, `coarse_target`
    `[N, h, w]` (block means of `x`) and `has_extreme` `[N]` (1.0 where some pixel
    exceeds the extreme threshold). With `data.oversample_extremes = k > 1` the
    training split holds every extreme day `k` times.

    Raises:
      ConfigError: what only the data can tell: a user file that cannot be read or split
        (`data.load_source`), or `data.augment.rotations` on fields that are not square.
    """
    raw = raw_splits(config)
    x, y = raw["train"]["x"], raw["train"]["y"]
    factor = x.shape[1] // y.shape[1]
    if config.data.augment.rotations and x.shape[1] != x.shape[2]:
        raise ConfigError(
            f"data.augment.rotations needs square fields, got {x.shape[1]}x{x.shape[2]}"
        )
    threshold = extreme_threshold(config)
    splits = {}
    for name, split in raw.items():
        fields = split["x"]
        maxima = fields.reshape(len(fields), -1).max(axis=1)
        splits[name] = {
            "x": fields,
            "y": split["y"],
            "coarse_target": data_lib.coarsen(fields, factor).astype(np.float32),
            "has_extreme": (maxima > threshold).astype(np.float32),
        }
    repeats = config.data.oversample_extremes
    if repeats > 1:
        train = splits["train"]
        extra = np.repeat(np.flatnonzero(train["has_extreme"]), repeats - 1)
        order = np.concatenate([np.arange(len(train["x"])), extra])
        splits["train"] = {key: values[order] for key, values in train.items()}
    return splits
