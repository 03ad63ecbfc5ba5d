"""`python -m jaxguard.sample` (`jaxguard/sample.py`): ensembles written back as netCDF.

The small cVAE is set up on a netCDF file with dates and lat/lon axes, so the test checks what a
climate user gets back: the members, the prior-mean field, the predictors and the truth on the
input's own coordinates. Training would only cost time here (compiling the train step), so the
run's restore is replaced by an untrained model of the same config; the CLI's npz outputs and
scores on a trained run are tested with the task (tests/tasks/cvae/test_cvae.py).
"""

import os
import sys

import numpy as np
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import sample, trainer
from jaxguard.config import ConfigError
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae import data as data_lib

xarray = pytest.importorskip("xarray")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")
NAMES = [
    "data.field_var=pr",
    "data.predictor_vars=('coarse_pr', 'moisture', 'instability')",
    "data.fine_dims=('lat', 'lon')",
    "data.coarse_dims=('rlat', 'rlon')",
]


@pytest.fixture(scope="module")
def netcdf_setup(tmp_path_factory):
    """`(dataset, config)`: the small cVAE's config reading a netCDF copy of embedded data."""
    folder = tmp_path_factory.mktemp("netcdf_run")
    embedded = data_lib.generate(
        num_train=160,
        num_val=1,
        num_test=1,
        fine_size=16,
        factor=4,
        heavy_day_fraction=0.1,
        heavy_peak_min=50.0,
        seed=0,
    )["train"]
    x, y = embedded["x"], embedded["y"]
    dataset = xarray.Dataset(
        {
            "pr": (("time", "lat", "lon"), x, {"units": "mm/day", "long_name": "precipitation"}),
            "coarse_pr": (("time", "rlat", "rlon"), y[..., 0]),
            "moisture": (("time", "rlat", "rlon"), y[..., 1]),
            "instability": (("time", "rlat", "rlon"), y[..., 2]),
        },
        coords={
            "time": np.datetime64("1995-06-01") + np.arange(len(x)).astype("timedelta64[D]"),
            "lat": 45.0 + 0.1 * np.arange(16),
            "lon": 7.0 + 0.1 * np.arange(16),
            "rlat": 45.15 + 0.4 * np.arange(4),
            "rlon": 7.15 + 0.4 * np.arange(4),
        },
    )
    source = str(folder / "alps.nc")
    dataset.to_netcdf(source, engine="h5netcdf")
    config = config_lib.load_config(
        SMALL,
        [
            f"data.source={source}",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            *NAMES,
        ],
    )
    return dataset, config


@pytest.fixture
def netcdf_run(netcdf_setup, monkeypatch):
    """`(dataset, run dir)`: `trainer.restore_model` gives the untrained model of the config."""
    dataset, config = netcdf_setup
    splits = TASK.make_splits(config)
    model = TASK.make_model(config, splits, nnx.Rngs(0))
    model.eval()
    monkeypatch.setattr(trainer, "restore_model", lambda run: (config, model, splits))
    return dataset, "RUN_DIR"


def test_netcdf_ensemble_keeps_the_input_coordinates(netcdf_run, tmp_path, capsys):
    dataset, workdir = netcdf_run
    out = tmp_path / "out"
    _, npz_path, netcdf_path = sample.main(
        ["--run", workdir, "--n", "3", "--indices", "0,5", "--format", "netcdf", "--out", str(out)]
    )
    assert f"samples (netCDF): {netcdf_path}" in capsys.readouterr().out
    written = xarray.open_dataset(netcdf_path, engine="h5netcdf")
    with written, np.load(npz_path) as saved:
        # The test split is the last 20% of the days (32 of 160): rows 0 and 5 are days 128, 133.
        np.testing.assert_array_equal(written["time"].values, dataset["time"].values[[128, 133]])
        np.testing.assert_array_equal(written["lat"].values, dataset["lat"].values)
        np.testing.assert_array_equal(written["rlon"].values, dataset["rlon"].values)
        assert written["samples"].dims == ("time", "member", "lat", "lon")
        assert written["samples"].attrs["units"] == "mm/day"
        np.testing.assert_array_equal(written["samples"].values, saved["samples"])
        np.testing.assert_array_equal(written["pr"].values, dataset["pr"].values[[128, 133]])
        assert written["prior_mean"].shape == (2, 16, 16)
        assert np.all(written["prior_mean"].values >= 0)
        np.testing.assert_array_equal(
            written["predictors"].values[..., 1], dataset["moisture"].values[[128, 133]]
        )
        assert list(written["channel"].values) == ["coarse_pr", "moisture", "instability"]


def test_netcdf_without_the_io_extra_says_which_to_install(netcdf_run, monkeypatch):
    _, workdir = netcdf_run
    monkeypatch.setitem(sys.modules, "h5netcdf", None)  # `import h5netcdf` now raises
    with pytest.raises(
        ConfigError,
        match=r"^--format netcdf: netCDF and zarr need the h5netcdf package, which is not "
        r"installed; pip install 'jaxguard\[io\]'$",
    ):
        sample.main(["--run", workdir, "--format", "netcdf"])
