"""The pointer task's splits from the config: the embedded generator or the user's images."""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from jaxguard.tasks.pointer import data, sources


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """`{"train"|"val"|"test": split}` (see `data` for the arrays of a split)."""
    d = config.data
    if d.source:
        return sources.load_folder(
            d.source,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            done_fraction=d.done_fraction,
            examples_per_image=d.examples_per_image,
            seed=config.seed,
        )
    return data.generate(
        num_train=d.num_train,
        num_val=d.num_val,
        num_test=d.num_test,
        image_size=d.image_size,
        objects_min=d.objects_min,
        objects_max=d.objects_max,
        object_radius=d.object_radius,
        noise=d.noise,
        done_fraction=d.done_fraction,
        examples_per_image=d.examples_per_image,
        seed=config.seed,
        detour_rate=d.detour_rate,
    )


def image_size(config: ConfigDict) -> tuple[int, int]:
    """`(height, width)` of the task's images."""
    if config.data.source:
        return sources.source_image_size(config.data.source)
    return config.data.image_size, config.data.image_size
