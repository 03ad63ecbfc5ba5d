"""The surface task's generator, patch sampling, user-file loading and splits."""

import os

import numpy as np
import pytest
from scipy import ndimage

from jaxguard import config as config_lib
from jaxguard.config import ConfigError
from jaxguard.tasks.surface import data as data_lib
from jaxguard.tasks.surface import task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")
DEFAULT = os.path.join(ROOT, "configs/surface.py")


@pytest.fixture(scope="module")
def default_volumes():
    config = config_lib.load_config(DEFAULT)
    return config, data_lib.volumes_for(config.data, config.seed)


def test_embedded_volumes_match_the_seed_foreground_figures(default_volumes):
    config, volumes = default_volumes
    counts = {name: len(pairs) for name, pairs in volumes.items()}
    assert counts == {"train": 4, "val": 1, "test": 2}
    masks = [mask for pairs in volumes.values() for _, mask in pairs]
    for volume, mask in volumes["train"]:
        assert volume.shape == mask.shape == (48, 48, 48)
        assert volume.dtype == np.float32 and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        assert abs(volume.mean()) < 1e-4 and volume.std() == pytest.approx(1.0, rel=1e-4)
    # The seed: 66% foreground overall, 27%-92% per sample.
    assert np.mean([m.mean() for m in masks]) == pytest.approx(0.66, abs=0.02)
    rng = np.random.default_rng(1)
    patches = data_lib.sample_patches(
        rng, volumes["train"], count=400, size=16, foreground_prob=0.66
    )
    fractions = patches["labels"].mean(axis=(1, 2, 3))
    assert fractions.min() < 0.35 and fractions.max() > 0.9
    assert fractions.mean() == pytest.approx(0.66, abs=0.04)


def test_sheets_are_thin_stacked_and_sometimes_touch(default_volumes):
    _, volumes = default_volumes
    for _, mask in volumes["train"]:
        # Many air gaps between few sheet components: the sheets are stacked layers that
        # merge where the gap closes.
        sheets = ndimage.label(mask)[1]
        gaps = ndimage.label(1 - mask)[1]
        assert sheets < gaps
        # Thin: papyrus voxels lie about 2 voxels from the air, and almost all within 6.
        depth = ndimage.distance_transform_edt(mask)[mask == 1]
        assert depth.mean() < 2.5 and np.percentile(depth, 99) < 6


def test_generator_is_deterministic_and_test_volumes_do_not_depend_on_train_count():
    config = config_lib.load_config(SMALL)
    first = data_lib.volumes_for(config.data, 0)
    again = data_lib.volumes_for(config.data, 0)
    more = config_lib.load_config(SMALL, ["data.num_train_volumes=3"])
    other = data_lib.volumes_for(more.data, 0)
    for (a, ma), (b, _), (c, mc) in zip(first["test"], again["test"], other["test"], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(ma, mc)
    assert not np.array_equal(
        first["train"][0][0], data_lib.volumes_for(config.data, 1)["train"][0][0]
    )


@pytest.mark.parametrize("foreground_prob", [0.0, 1.0])
def test_patches_are_centred_on_the_requested_class(foreground_prob):
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[:, :, 6:] = 1
    volume = np.arange(mask.size, dtype=np.float32).reshape(mask.shape)
    patches = data_lib.sample_patches(
        np.random.default_rng(0),
        [(volume, mask)],
        count=20,
        size=4,
        foreground_prob=foreground_prob,
    )
    assert patches["volume"].shape == patches["labels"].shape == (20, 4, 4, 4)
    # Centre voxel (index size // 2) of every patch has the requested class.
    np.testing.assert_array_equal(patches["labels"][:, 2, 2, 2], foreground_prob)
    # Patches are crops: labels and volume come from the same place.
    for volume_patch, label_patch in zip(patches["volume"], patches["labels"], strict=True):
        index = np.unravel_index(volume_patch.astype(int).ravel(), mask.shape)
        np.testing.assert_array_equal(label_patch.ravel(), mask[index])


def test_tiles_cover_the_volume_once():
    volume = np.arange(8 * 8 * 12, dtype=np.float32).reshape(8, 8, 12)
    tiles = data_lib.tile_volume(volume, (volume > 100).astype(np.uint8), 4)
    assert tiles["volume"].shape == (2 * 2 * 3, 4, 4, 4)
    np.testing.assert_array_equal(np.sort(tiles["volume"].ravel()), volume.ravel())
    np.testing.assert_array_equal(tiles["labels"], tiles["volume"] > 100)


def test_splits_hold_patches_tiles_and_exact_signed_distance_maps():
    config = config_lib.load_config(SMALL)
    splits = task.make_splits(config)
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


# ----------------------------------------------------------------------------- user files


def _user_config(source, *overrides):
    return config_lib.load_config(SMALL, [f"data.source={source}", *overrides])


def _pairs(count, shape=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    volumes = rng.normal(size=(count, *shape)).astype(np.float32) * 3 + 7
    masks = (volumes > 7).astype(np.uint8)
    return volumes, masks


def test_npz_source_is_split_and_normalised(tmp_path):
    volumes, masks = _pairs(4)
    path = tmp_path / "scroll.npz"
    np.savez(path, volume=volumes, mask=masks)
    config = _user_config(path)
    splits = task.make_splits(config)
    # 4 volumes: 2 train, 1 val, 1 test (the last).
    test_volume = data_lib.normalise(volumes[3])
    np.testing.assert_array_equal(
        splits["test"]["volume"], data_lib.tile_volume(test_volume, masks[3], 8)["volume"]
    )
    np.testing.assert_array_equal(
        splits["test"]["labels"], data_lib.tile_volume(test_volume, masks[3], 8)["labels"]
    )
    assert splits["train"]["volume"].shape[1:] == (8, 8, 8)


def test_folder_source_pairs_volumes_and_masks_by_name(tmp_path):
    volumes, masks = _pairs(3, shape=(16, 16, 20))
    (tmp_path / "volumes").mkdir()
    (tmp_path / "masks").mkdir()
    for index in range(3):
        np.save(tmp_path / "volumes" / f"v{index}.npy", volumes[index])
        np.save(tmp_path / "masks" / f"v{index}.npy", masks[index].astype(bool))
    pairs = data_lib.load_volumes(str(tmp_path))
    assert len(pairs) == 3
    for (volume, mask), raw, raw_mask in zip(pairs, volumes, masks, strict=True):
        np.testing.assert_allclose(volume, (raw - raw.mean()) / raw.std(), atol=1e-5)
        np.testing.assert_array_equal(mask, raw_mask)


def _expect_config_error(source, match, *overrides):
    with pytest.raises(ConfigError, match=match) as error:
        task.make_splits(_user_config(source, *overrides))
    assert "\n" not in str(error.value)


def test_missing_file_is_named(tmp_path):
    _expect_config_error(tmp_path / "absent.npz", "absent.npz not found")


def test_missing_mask_file_in_a_folder_is_named(tmp_path):
    volumes, _ = _pairs(1)
    (tmp_path / "volumes").mkdir()
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "volumes" / "a.npy", volumes[0])
    _expect_config_error(tmp_path, "masks/a.npy not found")


def test_shape_mismatch_between_volume_and_mask_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    path = tmp_path / "bad.npz"
    np.savez(path, volume=volumes, mask=masks[:, :, :, :8])
    _expect_config_error(
        path, "volume has shape \\(3, 16, 16, 16\\) but mask has shape \\(3, 16, 16, 8\\)"
    )


def test_non_binary_mask_is_reported_with_its_values(tmp_path):
    volumes, masks = _pairs(3)
    masks[0, 0, 0, 0] = 2  # e.g. an "unlabelled" class
    path = tmp_path / "labels.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "mask is not binary \\(values 0, 1, 2\\)")


def test_non_finite_volume_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    volumes[1, 2, 2, 2] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "finite")


@pytest.mark.parametrize("name", ["scroll.zarr", "stack.tif", "stack.tiff"])
def test_zarr_and_tiff_sources_are_refused_with_a_hint(tmp_path, name):
    _expect_config_error(tmp_path / name, "not supported yet .* convert")


def test_too_few_volumes_for_the_splits(tmp_path):
    volumes, masks = _pairs(2)
    path = tmp_path / "two.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "holds 2 volume\\(s\\) .* leave none for training")


def test_npz_without_the_named_arrays(tmp_path):
    volumes, masks = _pairs(3)
    path = tmp_path / "renamed.npz"
    np.savez(path, image=volumes, mask=masks)
    _expect_config_error(path, "has no array 'volume'")
