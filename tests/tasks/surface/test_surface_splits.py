"""The surface task's splits (`jaxguard/tasks/surface/splits.py`)."""

import os

import numpy as np
import pytest
from scipy import ndimage

from jaxguard import config as config_lib
from jaxguard.tasks.surface import data as data_lib
from jaxguard.tasks.surface import splits as splits_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")


def test_splits_hold_patches_tiles_and_exact_signed_distance_maps():
    config = config_lib.load_config(SMALL)
    splits = splits_lib.make_splits(config)
    size = config.data.patch_size
    assert splits["train"]["volume"].shape == (config.data.train_patches, size, size, size)
    tiles = (config.data.volume_size // size) ** 3
    assert len(splits["val"]["labels"]) == tiles * config.data.num_val_volumes
    assert len(splits["test"]["labels"]) == tiles * config.data.num_test_volumes
    for split in splits.values():
        assert set(split) == {"volume", "labels", "signed_distance"}
        for labels, distance in zip(split["labels"][:4], split["signed_distance"][:4], strict=True):
            mask = labels > 0.5
            expected = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
            if mask.all() or not mask.any():
                expected = np.zeros_like(expected)
            np.testing.assert_allclose(distance, expected, atol=1e-5)


def test_embedded_volumes_come_from_the_generator():
    config = config_lib.load_config(SMALL)
    volumes = splits_lib.volumes_for(config.data, config.seed)
    generated = data_lib.generate_volumes(config.data, config.seed)
    for name in ("train", "val", "test"):
        assert len(volumes[name]) == len(generated[name])
        for (volume, mask), (expected, expected_mask) in zip(
            volumes[name], generated[name], strict=True
        ):
            np.testing.assert_array_equal(volume, expected)
            np.testing.assert_array_equal(mask, expected_mask)


def test_foreground_prior_is_the_training_label_mean():
    labels = np.zeros((4, 10), np.float32)
    labels[:, :7] = 1
    assert splits_lib.foreground_prior({"train": {"labels": labels}}) == pytest.approx(0.7)
