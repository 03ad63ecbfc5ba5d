"""The zoo variants' data (`configs/cvae.py:zoo_*`): rare heavy days, wide and visible extremes.

The zoo variants shrink the embedded generator (8 x 8 fields on a 4 x 4 predictor grid, 3% heavy
days, extreme threshold 41 mm/day, just above the 40 mm/day cap of ordinary days) so a run takes
about a minute. These tests pin the properties the variants' docstrings rely on, on the variant's
own config at smaller split sizes.
"""

import os

import pytest

from jaxguard import config as config_lib
from jaxguard.tasks.cvae import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
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
