"""The surface task's splits: training patches and tiles of the held-out volumes.

`make_splits(config)` returns `{"train"|"val"|"test": {"volume", "labels",
"signed_distance"}}`, each `[N, P, P, P]` float32 with `P = data.patch_size`. The volumes are
the embedded ones (`data.generate_volumes`) or the user's (`sources`, when `data.source` is
set). Training patches are sampled once from the training volumes with their own seed stream;
validation and test are non-overlapping tiles of the held-out volumes. The labels' signed
distance map (for the boundary loss) is a function of the labels only, so it is computed once
here.
"""

from __future__ import annotations

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.tasks.surface import data as data_lib
from jaxguard.tasks.surface import sources

# Patches per signed-distance call: a fixed shape, so the map compiles once.
_DISTANCE_CHUNK = 32

_signed_distance = jax.jit(losses.signed_distance_map)


def volumes_for(data, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The `(volume, mask)` pairs of every split: embedded, or from `data.source`."""
    if not data.source:
        return data_lib.generate_volumes(data, seed)
    return sources.split_volumes(
        sources.load_volumes(data.source),
        num_val=data.num_val_volumes,
        num_test=data.num_test_volumes,
        patch_size=data.patch_size,
    )


def signed_distance_maps(labels: np.ndarray) -> np.ndarray:
    """`losses.signed_distance_map` of `[N, D, H, W]` labels, in fixed-size chunks."""
    maps = []
    for start in range(0, len(labels), _DISTANCE_CHUNK):
        chunk = labels[start : start + _DISTANCE_CHUNK]
        padded = np.zeros((_DISTANCE_CHUNK, *chunk.shape[1:]), np.float32)
        padded[: len(chunk)] = chunk
        maps.append(np.asarray(_signed_distance(padded))[: len(chunk)])
    return np.concatenate(maps)


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """Training patches and tiles of the held-out volumes, with signed distance maps.

    The config is checked by `load_config` (`checks.check_config`) before this runs; what
    only the data can tell (a user file's problems) is a ConfigError from here.
    """
    d = config.data
    volumes = volumes_for(d, config.seed)
    # The patch sampler has its own stream, independent of the volumes' streams.
    patch_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(4)[3])
    splits = {
        "train": data_lib.sample_patches(
            patch_rng,
            volumes["train"],
            count=d.train_patches,
            size=d.patch_size,
            foreground_prob=d.foreground_centre_prob,
        ),
        "val": data_lib.tile_volumes(volumes["val"], d.patch_size),
        "test": data_lib.tile_volumes(volumes["test"], d.patch_size),
    }
    for split in splits.values():
        split["signed_distance"] = signed_distance_maps(split["labels"])
    return splits


def foreground_prior(splits) -> float:
    """Foreground fraction of the training patches (what the loss sees)."""
    return float(np.mean(splits["train"]["labels"]))
