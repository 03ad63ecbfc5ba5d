"""The cVAE task's config checks (`jaxguard/tasks/cvae/checks.py`), run by `load_config`."""

import os

import pytest

from jaxguard import config as config_lib
from jaxguard.config import ConfigError
from jaxguard.tasks.cvae import TASK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "configs", "cvae.py")
SMALL = CONFIG + ":small"
# A .npz that does not exist: the fraction checks must fire before anything reads it.
ABSENT = "data.source=/nonexistent/days.npz"


@pytest.mark.parametrize("variant", ["", ":small", ":ratio_bug", ":no_extreme", ":before_fix"])
def test_bundled_configs_pass(variant):
    TASK.check_config(config_lib.load_config(CONFIG + variant))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.prior=gaussian"], "model.prior must be one of conditional, standard"),
        (["data.oversample_extremes=0"], "data.oversample_extremes"),
        (["data.extreme_threshold=0.0"], "data.extreme_threshold"),
        (["data.extreme_quantile=1.0"], "data.extreme_quantile"),
        (["data.num_train=0"], "data.num_train"),
        (["data.num_val=0"], "data.num_val"),
        (["data.num_test=0"], "data.num_test"),
        (["data.factor=0"], "data.factor"),
        (["data.fine_size=1"], "data.fine_size"),
        (["data.fine_size=18"], "data.fine_size=18 must be a multiple of data.factor=4"),
        (["data.heavy_day_fraction=1.5"], "data.heavy_day_fraction"),
        (["data.heavy_peak_min=0.0"], "data.heavy_peak_min"),
        ([ABSENT, "data.val_fraction=0.0"], "data.val_fraction"),
        ([ABSENT, "data.test_fraction=1.0"], "data.test_fraction"),
        ([ABSENT, "data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction + "),
        (["data.augment.input_noise=-0.1"], "data.augment.input_noise"),
        (["data.augment.mixup_alpha=-1.0"], "data.augment.mixup_alpha"),
        (["model.base_filters=0"], "model.base_filters"),
        (["model.d_y=0"], "model.d_y"),
        (["model.d_z=0"], "model.d_z"),
        (["model.encoder_dropout=1.0"], "model.encoder_dropout"),
        (["model.decoder_dropout=-0.1"], "model.decoder_dropout"),
        (["model.sampling.num_samples=0"], "model.sampling.num_samples"),
        (["model.sampling.num_examples=0"], "model.sampling.num_examples"),
        (["model.sampling.seed=-1"], "model.sampling.seed"),
        (["loss.lambda_base=-1.0"], "loss.lambda_base"),
        (["loss.lambda_ext=-1.0"], "loss.lambda_ext"),
        (["loss.beta=-0.1"], "loss.beta must"),
        (["loss.lambda_mass=-0.1"], "loss.lambda_mass"),
        (["loss.beta_warmup_epochs=-1.0"], "loss.beta_warmup_epochs"),
        (["guard.active_units.min_active_fraction=1.5"], "guard.active_units.min_active_fraction"),
        (["guard.active_units.activity_threshold=-0.1"], "guard.active_units.activity_threshold"),
        (["guard.active_units.start_epoch=-1"], "guard.active_units.start_epoch"),
        (["guard.volatility.max_jump=-0.5"], "guard.volatility.max_jump"),
        (["data.field_var="], "data.field_var must be a variable name, got ''"),
        (["data.predictor_vars=()"], "data.predictor_vars must list one or more distinct"),
        (["data.predictor_vars=('u', 'u')"], "data.predictor_vars must list one or more distinct"),
        (["data.time_dim="], "data.time_dim must be a dim name"),
        (["data.fine_dims=('lat',)"], "data.fine_dims must be two dim names (y axis, x axis)"),
        (["data.coarse_dims=('lat', 3)"], "data.coarse_dims must be two dim names"),
        (
            ["data.coarse_dims=('lat', 'lon')"],
            "data.time_dim, data.fine_dims and data.coarse_dims must be five distinct names",
        ),
    ],
)
def test_a_bad_value_is_one_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        config_lib.load_config(SMALL, overrides)
    message = str(error.value)
    assert message.startswith(key) and "\n" not in message


def test_netcdf_names_can_be_set_from_the_command_line():
    config = config_lib.load_config(
        SMALL,
        ["data.field_var=pr", "data.predictor_vars=('psl', 'q')", "data.fine_dims=('y', 'x')"],
    )
    assert config.data.field_var == "pr" and tuple(config.data.predictor_vars) == ("psl", "q")


@pytest.mark.parametrize(
    "override, new",
    [
        ("model.collapse_guard.enabled=False", "guard.active_units.enabled"),
        ("model.volatility_warn_change=0.5", "guard.volatility.max_jump"),
        ("guard.volatility.warn_change=0.5", "guard.volatility.max_jump"),
    ],
)
def test_moved_guard_keys_name_their_new_place(override, new):
    with pytest.raises(ConfigError, match=f"moved to {new}"):
        config_lib.load_config(SMALL, [override])


def test_a_missing_guard_section_is_named():
    config = config_lib.load_config(SMALL)
    config.unlock()
    del config.guard["active_units"]
    with pytest.raises(ConfigError, match=r"^guard.active_units is missing"):
        TASK.check_config(config)
