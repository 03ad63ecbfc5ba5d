"""The cVAE task's embedded generator and its user-file loader (`jaxguard/tasks/cvae/data.py`)."""

import os
import sys

import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard import train
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


NAMES = data_lib.Names(
    field="x",
    predictors=("y",),
    time="time",
    fine=("lat", "lon"),
    coarse=("lat_coarse", "lon_coarse"),
)


def _load(path, names=NAMES):
    return data_lib.load_source(str(path), val_fraction=0.1, test_fraction=0.2, names=names)


def test_npz_is_split_into_contiguous_blocks(tmp_path, write_npz, rain_arrays):
    x, y = rain_arrays(20)
    splits, coords = _load(write_npz(tmp_path, x=x, y=y))
    assert [len(splits[s]["x"]) for s in ("train", "val", "test")] == [14, 2, 4]
    np.testing.assert_array_equal(splits["test"]["x"], x[16:])
    np.testing.assert_array_equal(splits["val"]["y"], y[14:16])
    # Without coordinates in the file: sample numbers and pixel indices.
    np.testing.assert_array_equal(coords.time["test"], np.arange(16, 20))
    np.testing.assert_array_equal(coords.fine[1], np.arange(8))
    assert coords.channels == ("channel 0", "channel 1")


def _climate_dataset(x, y):
    """x [N, 8, 8] and y [N, 2, 2, C] as an xarray Dataset with dates and lat/lon axes."""
    xarray = pytest.importorskip("xarray")
    n = len(x)
    return xarray.Dataset(
        {
            "pr": (("time", "lat", "lon"), x, {"units": "mm/day"}),
            "psl": (("time", "rlat", "rlon"), y[..., 0]),
            "q": (("time", "rlat", "rlon", "level"), y[..., 1:]),
        },
        coords={
            "time": np.datetime64("2001-01-01") + np.arange(n).astype("timedelta64[D]"),
            "lat": 40.0 + 0.25 * np.arange(8),
            "lon": 5.0 + 0.25 * np.arange(8),
            "rlat": [40.375, 41.375],
            "rlon": [5.375, 6.375],
            "level": [850],
        },
    )


CLIMATE_NAMES = data_lib.Names(
    field="pr", predictors=("psl", "q"), time="time", fine=("lat", "lon"), coarse=("rlat", "rlon")
)


@pytest.mark.parametrize("kind", ["netcdf4", "netcdf3", "zarr"])
def test_netcdf_and_zarr_round_trip_with_their_coordinates(tmp_path, rain_arrays, kind):
    x, y = rain_arrays(20)
    dataset = _climate_dataset(x, y)
    if kind == "zarr":
        path = tmp_path / "era.zarr"
        dataset.to_zarr(path, consolidated=False)
    else:
        path = tmp_path / "era.nc"
        dataset.to_netcdf(path, engine="h5netcdf" if kind == "netcdf4" else "scipy")
    splits, coords = _load(path, CLIMATE_NAMES)
    np.testing.assert_array_equal(splits["train"]["x"], x[:14])
    np.testing.assert_array_equal(splits["test"]["y"], y[16:])  # channels in the listed order
    np.testing.assert_array_equal(coords.time["val"], dataset["time"].values[14:16])
    np.testing.assert_array_equal(coords.fine[0], dataset["lat"].values)
    np.testing.assert_array_equal(coords.coarse[1], [5.375, 6.375])
    assert coords.channels == ("psl", "q[850]")
    assert coords.field_attrs["units"] == "mm/day"


def test_netcdf_dims_may_come_in_any_order(tmp_path, rain_arrays):
    x, y = rain_arrays(20)
    dataset = _climate_dataset(x, y).transpose("lon", "lat", "time", "rlat", "rlon", "level")
    path = tmp_path / "era.nc"
    dataset.to_netcdf(path, engine="h5netcdf")
    splits, _ = _load(path, CLIMATE_NAMES)
    np.testing.assert_array_equal(splits["train"]["x"], x[:14])


def _bad_npz(tmp_path, x, y, case):
    """A `.npz` file holding one kind of bad input (the cases of issue 14 and the old ones)."""
    arrays = {"x": x, "y": y}
    if case == "missing x":
        del arrays["x"]
    elif case == "missing y":
        del arrays["y"]
    elif case == "x rank":
        arrays["x"] = x[..., None]
    elif case == "y rank":
        arrays["y"] = y[0]
    elif case == "counts":
        arrays["y"] = y[:10]
    elif case == "ratio":
        arrays["x"] = x[:, :, :6]
    elif case == "negative":
        arrays["x"] = -x - 1
    elif case == "empty grid":
        arrays["x"] = np.zeros((20, 0, 0), np.float32)
    elif case == "empty channels":
        arrays["y"] = np.zeros((20, 2, 2, 0), np.float32)
    elif case == "no samples":
        arrays = {"x": x[:0], "y": y[:0]}
    elif case == "huge":
        arrays["x"] = x.astype(np.float64)
        arrays["x"][2, 1, 3] = 1e30
    elif case == "infinite y":
        arrays["y"] = y.copy()
        arrays["y"][5, 0, 1, 1] = np.inf
    elif case == "strings":
        arrays["x"] = x.astype(str)
    elif case == "complex":
        arrays["y"] = y.astype(np.complex64)
    elif case == "booleans":
        arrays["x"] = x > 1
    if case == "pickled":
        path = tmp_path / "data.npz"
        np.savez(path, x=np.array([x[0], "rain"], dtype=object), y=y)  # needs pickle to load
        return str(path)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing x", r"array 'x' is missing \(the file has y\)"),
        ("missing y", r"array 'y' is missing"),
        ("x rank", r"'x' has shape \(20, 8, 8, 1\); expected \[N, H, W\]"),
        ("y rank", r"array 'y' has shape \(2, 2, 2\); expected \[N, h, w, C\]"),
        ("counts", "x has 20 samples but y has 10"),
        ("ratio", "not a whole multiple"),
        ("negative", "array 'x' holds 1280 negative precipitation values"),
        ("empty grid", r"array 'x' has shape \(20, 0, 0\), an empty axis; expected \[N, H, W\]"),
        ("empty channels", r"array 'y' has shape \(20, 2, 2, 0\), an empty axis"),
        ("no samples", r"array 'x' has shape \(0, 8, 8\), an empty axis"),
        ("huge", r"array 'x' holds 1 values beyond ±1e\+15 \(first at index \(2, 1, 3\): 1e\+30\)"),
        (
            "infinite y",
            r"array 'y' holds 1 NaN or infinite values \(first at index \(5, 0, 1, 1\)\)",
        ),
        ("strings", r"array 'x' has dtype <U\d+; expected real numbers"),
        ("complex", r"array 'y' has dtype complex64; expected real numbers"),
        ("booleans", r"array 'x' has dtype bool; expected real numbers"),
        (
            "pickled",
            r"array 'x' is a pickled object array, and .npz files are read with "
            r"allow_pickle=False",
        ),
    ],
)
def test_npz_errors_name_the_file_and_the_array(tmp_path, rain_arrays, case, message):
    x, y = rain_arrays()
    path = _bad_npz(tmp_path, x, y, case)
    with pytest.raises(ConfigError, match=message) as error:
        _load(path)
    assert str(error.value).startswith(f"data.source {path}: ") and "\n" not in str(error.value)


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
        _load(path)


def test_values_up_to_the_documented_bound_are_accepted(tmp_path, write_npz, rain_arrays):
    x, y = rain_arrays()
    x[0, 0, 0], y[0, 0, 0, 0] = 1e15, -1e15
    splits, _ = _load(write_npz(tmp_path, x=x, y=y))
    assert splits["train"]["x"][0, 0, 0] == np.float32(1e15)


def _write_dataset(tmp_path, dataset, kind):
    if kind == "zarr":
        path = tmp_path / "bad.zarr"
        dataset.to_zarr(path, consolidated=False)
    else:
        path = tmp_path / "bad.nc"
        dataset.to_netcdf(path, engine="h5netcdf")
    return str(path)


@pytest.mark.parametrize("kind", ["netcdf", "zarr"])
@pytest.mark.parametrize(
    "case, message",
    [
        (
            "missing variable",
            r"variable 'psl' is missing \(the dataset has pr, q\); set "
            "data.predictor_vars",
        ),
        (
            "wrong dims",
            r"variable 'pr' has dims \(time, y, x\); expected \(time, lat, lon\); "
            "set data.time_dim",
        ),
        ("empty grid", r"variable 'pr' has shape \(20, 0, 8\), an empty axis"),
        ("nan", r"variable 'psl' holds 1 NaN or infinite values \(first at index \(4, 1, 0\)\)"),
        ("huge", r"variable 'pr' holds 1 values beyond ±1e\+15"),
        ("strings", r"variable 'psl' has dtype <U\d+; expected real numbers"),
        ("ratio", "x grid 8x8 is not a whole multiple of the y grid 3x2"),
    ],
)
def test_netcdf_and_zarr_errors_name_the_file_and_the_variable(
    tmp_path, rain_arrays, kind, case, message
):
    x, y = rain_arrays()
    dataset = _climate_dataset(x, y)
    if case == "missing variable":
        dataset = dataset.drop_vars("psl")
    elif case == "wrong dims":
        dataset = dataset.rename({"lat": "y", "lon": "x"})
    elif case == "empty grid":
        dataset = dataset.isel(lat=slice(0, 0))
    elif case == "nan":
        dataset["psl"][4, 1, 0] = np.nan
    elif case == "huge":
        dataset["pr"] = dataset["pr"].astype(np.float64)
        dataset["pr"][0, 0, 0] = -1e30
    elif case == "strings":
        dataset["psl"] = dataset["psl"].astype(str)
    elif case == "ratio":
        dataset = dataset.reindex(rlat=[40.0, 41.0, 42.0], fill_value=0.0)
    if kind == "zarr" and case == "strings":
        pytest.skip("zarr 3 warns that fixed-width strings have no stable zarr v3 encoding")
    path = _write_dataset(tmp_path, dataset, kind)
    with pytest.raises(ConfigError, match=message) as error:
        _load(path, CLIMATE_NAMES)
    assert str(error.value).startswith(f"data.source {path}: ") and "\n" not in str(error.value)


def test_missing_file_unknown_format_and_too_few_samples(tmp_path, write_npz, rain_arrays):
    with pytest.raises(ConfigError, match="no such file"):
        _load(tmp_path / "absent.npz")
    csv_file = tmp_path / "era5.csv"
    csv_file.write_text("x,y\n")
    with pytest.raises(ConfigError, match=r"expected a .npz file, a netCDF .nc file or a .zarr"):
        _load(csv_file)
    damaged = tmp_path / "damaged.nc"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\nnot really")
    with pytest.raises(ConfigError, match=r"damaged.nc: not a readable netCDF file \(OSError"):
        _load(damaged)
    x, y = rain_arrays(2)
    with pytest.raises(ConfigError, match="too few"):
        data_lib.load_source(
            write_npz(tmp_path, x=x, y=y), val_fraction=0.4, test_fraction=0.4, names=NAMES
        )


@pytest.mark.parametrize("module", ["xarray", "h5netcdf", "h5py"])
def test_without_the_io_extra_the_error_names_it(tmp_path, monkeypatch, module):
    path = tmp_path / "era.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(
        ConfigError,
        match=f"need the {module} package, which is not installed; "
        r"pip install 'jaxguard\[io\]'",
    ):
        _load(path)


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


def test_cli_prints_one_line_and_exits_2_on_a_huge_value(tmp_path, capsys, rain_arrays):
    # The same path as `python -m jaxguard.train`: the data are read before anything compiles.
    x, y = rain_arrays()
    x = x.astype(np.float64)
    x[2, 1, 3] = 1e30
    path = tmp_path / "huge.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            [
                "--cfg",
                os.path.join(ROOT, "configs", "cvae.py:small"),
                f"--cfg.data.source={path}",
                "--workdir",
                str(tmp_path / "run"),
            ]
        )
    assert exit_info.value.code == train.CONFIG_ERROR_EXIT
    # (Other lines may be warnings of the tests before, about JAX having run in this process.)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(
        f"error: data.source {path}: array 'x' holds 1 values beyond ±1e+15"
    )
