"""The surface task's embedded generator and patch sampling (`jaxguard/tasks/surface/data.py`)."""

import os

import numpy as np
import pytest
from scipy import ndimage

from jaxguard import config as config_lib
from jaxguard.config import ConfigError
from jaxguard.tasks.surface import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")
DEFAULT = os.path.join(ROOT, "configs/surface.py")


@pytest.fixture(scope="module")
def default_volumes():
    config = config_lib.load_config(DEFAULT)
    return config, data_lib.generate_volumes(config.data, config.seed)


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
    first = data_lib.generate_volumes(config.data, 0)
    again = data_lib.generate_volumes(config.data, 0)
    more = config_lib.load_config(SMALL, ["data.num_train_volumes=3"])
    other = data_lib.generate_volumes(more.data, 0)
    for (a, ma), (b, _), (c, mc) in zip(first["test"], again["test"], other["test"], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(ma, mc)
    assert not np.array_equal(
        first["train"][0][0], data_lib.generate_volumes(config.data, 1)["train"][0][0]
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


# ----------------------------------------------------------------------------- zoo data variant
# The `data.air_contrast` variant of the embedded generator and the `imbalance` variants.

CONFIG = os.path.join(ROOT, "configs/surface.py")
# The generator's default settings on a small volume.
SETTINGS = dict(
    size=24,
    sheet_spacing=(5.0, 8.0),
    fill_mean=0.66,
    fill_std=0.2,
    warp=1.5,
    blur=0.5,
    fibre_contrast=0.3,
    bias=0.15,
    noise=0.4,
)


def _volume(seed: int, **overrides):
    return data_lib.generate_volume(np.random.default_rng(seed), **{**SETTINGS, **overrides})


def _separation(volume: np.ndarray, mask: np.ndarray) -> float:
    """Papyrus mean minus air mean, in units of the pooled within-class standard deviation."""
    air, papyrus = volume[mask == 0], volume[mask == 1]
    return float((papyrus.mean() - air.mean()) / np.sqrt((air.var() + papyrus.var()) / 2))


def test_default_air_contrast_leaves_the_volume_unchanged():
    volume, mask = _volume(0)
    again, same_mask = _volume(0, air_contrast=1.0)
    np.testing.assert_array_equal(volume, again)
    np.testing.assert_array_equal(mask, same_mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_air_contrast_keeps_the_labels_and_blurs_the_classes(seed):
    volume, mask = _volume(seed)
    faint, faint_mask = _volume(seed, air_contrast=0.6)
    # Same geometry and the seed's 66% papyrus: only the image changes.
    np.testing.assert_array_equal(mask, faint_mask)
    assert mask.mean() == pytest.approx(0.66, abs=0.03)
    assert abs(faint.mean()) < 1e-4 and faint.std() == pytest.approx(1.0, rel=1e-4)
    # The class means are about 1.2 pooled standard deviations apart by default and about
    # 0.67 at air_contrast 0.6, so a quarter of the air is brighter than the mean papyrus.
    assert _separation(volume, mask) > 1.0
    assert 0.5 < _separation(faint, faint_mask) < 0.8
    assert np.mean(faint[mask == 0] > faint[mask == 1].mean()) > 0.2
    assert np.mean(volume[mask == 0] > volume[mask == 1].mean()) < 0.15


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_air_contrast_out_of_range_names_the_key(value):
    with pytest.raises(ConfigError, match="data.air_contrast"):
        config_lib.load_config(CONFIG, [f"--cfg.data.air_contrast={value}"])


def test_imbalance_variants_share_their_data_and_differ_in_the_seed_fix():
    default = config_lib.load_config(CONFIG)
    failure = config_lib.load_config(f"{CONFIG}:imbalance")
    fixed = config_lib.load_config(f"{CONFIG}:imbalance_fixed")
    assert default.data.air_contrast == 1.0
    assert failure.data.to_dict() == fixed.data.to_dict()
    assert failure.data.air_contrast < 1.0
    assert (failure.optim.lr, failure.optim.warmup_epochs) == (1e-3, 0.0)
    assert (fixed.optim.lr, fixed.optim.warmup_epochs) == (1e-2, 5.0)
    assert (failure.loss.dice_weight, failure.loss.focal_weight) == (0.4, 0.2)
    assert (fixed.loss.dice_weight, fixed.loss.focal_weight) == (0.3, 0.4)
    assert not failure.loss.use_class_weights and fixed.loss.use_class_weights
    assert fixed.loss.focal_alpha == 0.34
