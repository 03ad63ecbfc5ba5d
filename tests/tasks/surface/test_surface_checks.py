"""The surface task's config checks (`jaxguard/tasks/surface/checks.py`).

`load_config` runs `TASK.check_config`, so every bad value stops with one ConfigError line
naming the key before any data are generated or any model is built.
"""

import os

import pytest

from jaxguard import config as config_lib
from jaxguard.tasks.surface import TASK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")
DEFAULT = os.path.join(ROOT, "configs/surface.py")

# (override on the small variant, the key its error names). The small variant has
# volume_size 16, patch_size 8, model depth 1 and initial_filters 4.
BAD_VALUES = [
    ("data.patch_size=7", "data.patch_size"),
    ("data.patch_size=32", "data.patch_size"),
    ("data.num_train_volumes=0", "data.num_train_volumes"),
    ("data.num_val_volumes=0", "data.num_val_volumes"),
    ("data.num_test_volumes=0", "data.num_test_volumes"),
    ("data.train_patches=0", "data.train_patches"),
    ("data.sheet_spacing=(8.0, 5.0)", "data.sheet_spacing"),
    ("data.sheet_spacing=(0.0, 5.0)", "data.sheet_spacing"),
    ("data.sheet_spacing=(5.0,)", "data.sheet_spacing"),
    ("data.fill_mean=1.0", "data.fill_mean"),
    ("data.blur=0.0", "data.blur"),
    ("data.fill_std=-0.1", "data.fill_std"),
    ("data.warp=-1.0", "data.warp"),
    ("data.fibre_contrast=-0.1", "data.fibre_contrast"),
    ("data.bias=-0.1", "data.bias"),
    ("data.noise=-0.1", "data.noise"),
    ("data.intensity_jitter=-0.1", "data.intensity_jitter"),
    ("data.foreground_centre_prob=1.5", "data.foreground_centre_prob"),
    ("data.window_overlap=1.0", "data.window_overlap"),
    ("data.window_blend=cosine", "data.window_blend"),
    ("model.initial_filters=0", "model.initial_filters"),
    ("model.depth=0", "model.depth"),
    ("model.norm=layer", "model.norm"),
    ("model.norm_groups=0", "model.norm_groups"),
    ("model.norm_groups=3", "model.norm_groups"),  # 3 does not divide 4 channels
    ("model.dropout=1.0", "model.dropout"),
    ("loss.dice_weight=-0.1", "loss.dice_weight"),
    ("loss.focal_weight=-0.1", "loss.focal_weight"),
    ("loss.boundary_weight=-0.1", "loss.boundary_weight"),
    ("loss.cldice_weight=-0.1", "loss.cldice_weight"),
    ("loss.connectivity_weight=-0.1", "loss.connectivity_weight"),
    ("loss.focal_alpha=1.5", "loss.focal_alpha"),
    ("loss.focal_gamma=-1.0", "loss.focal_gamma"),
    ("loss.dice_smooth=0.0", "loss.dice_smooth"),
    ("loss.cldice_smooth=0.0", "loss.cldice_smooth"),
    ("loss.cldice_iterations=-1", "loss.cldice_iterations"),
    ("guard.plateau.patience=1", "guard.plateau.patience"),
    ("guard.plateau.tolerance=-0.1", "guard.plateau.tolerance"),
    ("guard.plateau.start_within=0", "guard.plateau.start_within"),
    ("guard.majority_class.margin=0.5", "guard.majority_class.margin"),
    ("guard.majority_class.margin=0.0", "guard.majority_class.margin"),
    ("guard.majority_class.patience=0", "guard.majority_class.patience"),
    ("guard.majority_class.start_epoch=-1", "guard.majority_class.start_epoch"),
]


@pytest.mark.parametrize("variant", ["", ":seed_before", ":plateau", ":small"])
def test_the_bundled_variants_pass(variant):
    TASK.check_config(config_lib.load_config(DEFAULT + variant))


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_its_key(override, key):
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_config(SMALL, [override])
    message = str(error.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_check_config_rejects_a_config_changed_after_loading():
    config = config_lib.load_config(SMALL)
    config.model.norm = "layer"
    with pytest.raises(config_lib.ConfigError, match="^model.norm must be one of group, batch"):
        TASK.check_config(config)
    config = config_lib.load_config(SMALL)
    config.guard.plateau.tolerance = float("inf")  # not writable as an override
    with pytest.raises(config_lib.ConfigError, match="^guard.plateau.tolerance must be finite"):
        TASK.check_config(config)


def test_every_term_weight_zero_is_refused_naming_the_weights():
    zeros = [f"loss.{name}_weight=0.0" for name in ("dice", "focal", "boundary", "cldice")]
    config_lib.load_config(SMALL, zeros)  # connectivity alone is a loss
    with pytest.raises(config_lib.ConfigError, match="every term weight is 0") as error:
        config_lib.load_config(SMALL, [*zeros, "loss.connectivity_weight=0.0"])
    assert "loss.dice_weight" in str(error.value) and "loss.connectivity_weight" in str(error.value)


def test_a_disabled_guard_section_is_still_checked():
    with pytest.raises(config_lib.ConfigError, match="^guard.plateau.patience"):
        config_lib.load_config(SMALL, ["guard.plateau.enabled=False", "guard.plateau.patience=1"])
