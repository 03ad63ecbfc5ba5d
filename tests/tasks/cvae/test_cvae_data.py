"""The cVAE task's embedded generator and its .npz loader (`jaxguard/tasks/cvae/data.py`)."""

import os

import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard.config import ConfigError
from jaxguard.tasks.cvae import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GENERATOR = dict(
    num_train=200,
    num_val=40,
    num_test=100,
    fine_size=16,
    factor=4,
    heavy_day_fraction=0.05,
    heavy_peak_min=50.0,
    seed=3,
)


@pytest.fixture(scope="module")
def generated():
    return data_lib.generate(**GENERATOR)


def test_shapes_units_and_determinism(generated):
    again = data_lib.generate(**GENERATOR)
    for name, n in (("train", 200), ("val", 40), ("test", 100)):
        split = generated[name]
        assert split["x"].shape == (n, 16, 16) and split["x"].dtype == np.float32
        assert split["y"].shape == (n, 4, 4, 3) and split["y"].dtype == np.float32
        assert np.all(split["x"] >= 0)
        np.testing.assert_array_equal(split["x"], again[name]["x"])
    # The test split does not depend on the size of the others (independent streams).
    other = data_lib.generate(**{**GENERATOR, "num_train": 50})
    np.testing.assert_array_equal(other["test"]["x"], generated["test"]["x"])


def test_coarse_precipitation_is_the_block_mean_of_x(generated):
    x = generated["train"]["x"].astype(np.float64)
    # Float64 reference by explicit loops over the 4x4 blocks.
    reference = np.empty((len(x), 4, 4))
    for i in range(4):
        for j in range(4):
            reference[:, i, j] = x[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean(axis=(1, 2))
    np.testing.assert_allclose(generated["train"]["y"][..., 0], reference, rtol=1e-5, atol=1e-5)


def test_exactly_the_heavy_days_hold_extreme_pixels(generated):
    for name, n in (("train", 200), ("val", 40), ("test", 100)):
        maxima = generated[name]["x"].reshape(n, -1).max(axis=1)
        assert np.sum(maxima > 50.0) == round(0.05 * n)
    x = generated["train"]["x"]
    assert 0.3 < np.mean(x == 0) < 0.7  # dry areas
    wet = x[(x > 0) & (x <= 50)]
    assert np.mean(wet) > 1.5 * np.median(wet)  # right-skewed wet-pixel distribution


def test_seed_002_share_of_extreme_days_in_the_default_sizes():
    config = config_lib.load_config(os.path.join(ROOT, "configs", "cvae.py"))
    d = config.data
    assert round(d.heavy_day_fraction * d.num_train) == 26  # 1.3% of 2000
    assert d.extreme_threshold == d.heavy_peak_min


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="fine_size"):
        data_lib.generate(**{**GENERATOR, "fine_size": 18})
    with pytest.raises(ValueError, match="heavy_day_fraction"):
        data_lib.generate(**{**GENERATOR, "heavy_day_fraction": 1.5})
    with pytest.raises(TypeError, match="num_train"):
        data_lib.generate(**{**GENERATOR, "num_train": 2.0})


def test_npz_is_split_into_contiguous_blocks(tmp_path, write_npz, rain_arrays):
    x, y = rain_arrays(20)
    splits = data_lib.load_npz(write_npz(tmp_path, x=x, y=y), val_fraction=0.1, test_fraction=0.2)
    assert [len(splits[s]["x"]) for s in ("train", "val", "test")] == [14, 2, 4]
    np.testing.assert_array_equal(splits["test"]["x"], x[16:])
    np.testing.assert_array_equal(splits["val"]["y"], y[14:16])


@pytest.mark.parametrize(
    "arrays, message",
    [
        (lambda x, y: {"y": y}, r"array 'x' is missing \(the file has y\)"),
        (lambda x, y: {"x": x}, r"array 'y' is missing"),
        (lambda x, y: {"x": x[..., None], "y": y}, r"'x' has shape \(20, 8, 8, 1\); expected"),
        (lambda x, y: {"x": x, "y": y[0]}, r"array 'y' has shape \(2, 2, 2\); expected \[N, h, w"),
        (lambda x, y: {"x": x, "y": y[:10]}, "x has 20 samples but y has 10"),
        (lambda x, y: {"x": x[:, :, :6], "y": y}, "not a whole multiple"),
        (lambda x, y: {"x": -x - 1, "y": y}, "negative precipitation"),
    ],
)
def test_npz_errors_name_the_array(tmp_path, arrays, message, write_npz, rain_arrays):
    x, y = rain_arrays()
    path = write_npz(tmp_path, **arrays(x, y))
    with pytest.raises(ConfigError, match=message) as error:
        data_lib.load_npz(path, val_fraction=0.1, test_fraction=0.2)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_npz_nan_is_reported_with_its_index(tmp_path, write_npz, rain_arrays):
    x, y = rain_arrays()
    x[3, 4, 5] = np.nan
    x[7, 0, 0] = np.nan
    path = write_npz(tmp_path, x=x, y=y)
    with pytest.raises(
        ConfigError,
        match=r"'x' holds 2 NaN or infinite values \(first at index "
        r"\(3, 4, 5\)\)",
    ):
        data_lib.load_npz(path, val_fraction=0.1, test_fraction=0.2)


def test_missing_file_and_unsupported_formats(tmp_path, write_npz, rain_arrays):
    with pytest.raises(ConfigError, match="no such file"):
        data_lib.load_npz(str(tmp_path / "absent.npz"), val_fraction=0.1, test_fraction=0.2)
    netcdf = tmp_path / "era5.nc"
    netcdf.write_bytes(b"CDF\x01")
    with pytest.raises(ConfigError, match="zarr and netCDF are not supported yet"):
        data_lib.load_npz(str(netcdf), val_fraction=0.1, test_fraction=0.2)
    x, y = rain_arrays(2)
    with pytest.raises(ConfigError, match="too few"):
        data_lib.load_npz(write_npz(tmp_path, x=x, y=y), val_fraction=0.4, test_fraction=0.4)


# ----------------------------------------------------------------------------- zoo data variant
# The zoo variants' data (`configs/cvae.py:zoo_*`): rare heavy days, wide and visible extremes.

ZOO_VARIANTS = ("zoo_ratio_bug", "zoo_before_fix", "zoo_fixed", "zoo_mean_only")


def _config(variant):
    return config_lib.load_config(os.path.join(ROOT, "configs", f"cvae.py:{variant}"))


@pytest.fixture(scope="module")
def zoo_splits():
    d = _config("zoo_fixed").data
    return data_lib.generate(
        num_train=1000,
        num_val=200,
        num_test=200,
        fine_size=d.fine_size,
        factor=d.factor,
        heavy_day_fraction=d.heavy_day_fraction,
        heavy_peak_min=d.heavy_peak_min,
        seed=0,
    )


def test_zoo_variants_share_one_data_setup():
    first, *others = (_config(name).data for name in ZOO_VARIANTS)
    assert all(other.to_dict() == first.to_dict() for other in others)
    assert first.fine_size == 8 and first.factor == 2 and first.heavy_day_fraction == 0.03
    # The threshold lies above the soft cap of ordinary days (0.8 * heavy_peak_min = 40 mm/day).
    assert 0.8 * first.heavy_peak_min < first.extreme_threshold < first.heavy_peak_min


def test_only_the_rare_heavy_days_hold_extreme_pixels(zoo_splits):
    for name, split in zoo_splits.items():
        x = split["x"]
        extreme_days = (x > 41.0).any(axis=(1, 2))
        assert extreme_days.sum() == round(0.03 * len(x)), name


def test_heavy_day_extremes_are_wide(zoo_splits):
    # About 45% of a heavy day's 64 pixels are extreme: the per-sample extreme MAE averages over
    # many pixels, unlike the default 32 x 32 fields (about 15 of 1,024).
    x = zoo_splits["train"]["x"]
    extreme = x > 41.0
    heavy = extreme.any(axis=(1, 2))
    share = extreme[heavy].mean()
    assert 0.3 < share < 0.6
    assert extreme[~heavy].sum() == 0


def test_predictors_reveal_the_heavy_days(zoo_splits):
    # The coarse precipitation (channel 0, 2 x 2 block means) tells heavy days apart: the
    # extremes are learnable from the predictors, not noise.
    split = zoo_splits["train"]
    heavy = (split["x"] > 41.0).any(axis=(1, 2))
    coarse_max = split["y"][..., 0].max(axis=(1, 2))
    assert coarse_max[heavy].min() > coarse_max[~heavy].max()
