"""The cVAE task's split processing (`jaxguard/tasks/cvae/splits.py`): user files, oversampling."""

import os

import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard.config import ConfigError
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.splits import extreme_threshold, raw_splits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


def test_source_config_key_loads_the_file(tmp_path, write_npz, rain_arrays):
    x, y = rain_arrays(40)
    x[5, 3, 3] = 99.0
    path = write_npz(tmp_path, x=x, y=y)
    overrides = [f"data.source={path}", "data.extreme_threshold=60.0", "data.oversample_extremes=1"]
    splits = TASK.make_splits(config_lib.load_config(SMALL, overrides))
    assert splits["train"]["x"].shape[1:] == (8, 8)
    assert splits["train"]["coarse_target"].shape[1:] == (2, 2)
    np.testing.assert_array_equal(np.flatnonzero(splits["train"]["has_extreme"]), [5])
    config = config_lib.load_config(SMALL, [f"data.source={path}", "data.extreme_quantile=0.5"])
    assert extreme_threshold(config) == pytest.approx(np.quantile(splits["train"]["x"], 0.5))


def test_oversampling_repeats_the_extreme_days():
    config = config_lib.load_config(SMALL, ["data.oversample_extremes=3"])
    plain = TASK.make_splits(config_lib.load_config(SMALL, ["data.oversample_extremes=1"]))["train"]
    over = TASK.make_splits(config)["train"]
    extreme = int(plain["has_extreme"].sum())
    assert extreme > 0
    assert len(over["x"]) == len(plain["x"]) + 2 * extreme
    assert over["has_extreme"].sum() == 3 * extreme
    np.testing.assert_array_equal(over["x"][: len(plain["x"])], plain["x"])
    # The model's statistics and the report count the samples, before oversampling.
    assert len(raw_splits(config)["train"]["x"]) == len(plain["x"])


def test_rotations_on_fields_that_are_not_square_fail_where_the_data_are_read(tmp_path, write_npz):
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 3.0, size=(20, 8, 4)).astype(np.float32)
    y = rng.normal(size=(20, 2, 1, 2)).astype(np.float32)
    path = write_npz(tmp_path, x=x, y=y)
    config = config_lib.load_config(SMALL, [f"data.source={path}", "data.augment.rotations=True"])
    with pytest.raises(ConfigError, match="data.augment.rotations needs square fields, got 8x4"):
        TASK.make_splits(config)
