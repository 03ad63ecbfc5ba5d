"""The pointer task's config checks (`jaxguard/tasks/pointer/checks.py`).

`load_config` runs `TASK.check_config`, so every bad value stops with one ConfigError line
naming the key before any data are generated or any model is built.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxguard import config as config_lib
from jaxguard.tasks.pointer import TASK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "configs", "pointer.py")

# (override on the small variant, the text its error starts with). The small variant has
# 64 px images with 3-6 objects of radius 2 and a done fraction of 0.25.
BAD_VALUES = [
    ("data.num_train=0", "data.num_train must be >= 1"),
    ("data.num_val=0", "data.num_val must be >= 1"),
    ("data.num_test=0", "data.num_test must be >= 1"),
    ("data.image_size=0", "data.image_size must be >= 1"),
    ("data.object_radius=0.0", "data.object_radius must be > 0"),
    ("data.noise=-0.1", "data.noise must be >= 0"),
    ("data.objects_min=7", "data.objects_min (7) and data.objects_max (6)"),
    ("data.objects_min=0", "data.objects_min (0) and data.objects_max (6)"),
    ("data.objects_max=60", "data.objects_max=60 discs of radius 2.0 px do not fit"),
    ("data.done_fraction=1.5", "data.done_fraction must lie in [0, 1]"),
    ("data.examples_per_image=0", "data.examples_per_image must be >= 1"),
    ("data.source=objects.txt", "data.source objects.txt: expected a .csv or .json file"),
    ("data.source=/nowhere/objects.csv", "data.source /nowhere/objects.csv: no such file"),
    ("model.work_size=0", "model.work_size must be >= 1"),
    ("model.features=0", "model.features must be >= 1"),
    ("model.mark_sigma=0.0", "model.mark_sigma must be finite and > 0"),
    ("model.attention_scale=-1.0", "model.attention_scale must be finite and > 0"),
    ("model.head_init_std=-0.1", "model.head_init_std must be finite and >= 0"),
    ("model.dilations=(1, 0)", "model.dilations must hold dilations >= 1"),
    ("loss.spatial=huber", "loss.spatial must be one of hinge, seed_hinge, got 'huber'"),
    ("loss.norm=l3", "loss.norm must be one of l2, l1, got 'l3'"),
    ("loss.threshold_units=px", "loss.threshold_units must be one of normalized, pixels"),
    ("loss.threshold=0.0", "loss.threshold must be finite and > 0"),
    ("loss.threshold=1e999", "loss.threshold must be finite and > 0"),
    ("loss.done_weight=-1.0", "loss.done_weight must be >= 0"),
    ("loss.pos_weight=lots", "loss.pos_weight must be 'auto' or a number > 0, got 'lots'"),
    ("loss.pos_weight=0", "loss.pos_weight must be 'auto' or a number > 0"),
    ("guard.head_gradient_band.band=(5.0, 1.0)", "guard.head_gradient_band.band must be"),
    ("guard.head_gradient_band.band=(-1.0, 1.0)", "guard.head_gradient_band.band must be"),
    ("guard.head_gradient_band.band=(1.0,)", "guard.head_gradient_band.band must be"),
    ("guard.done_never_predicted.patience=0", "guard.done_never_predicted.patience must be"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_a_bad_value_is_one_config_error_naming_the_key(load_small, override, message):
    with pytest.raises(config_lib.ConfigError) as error:
        load_small(override)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_the_default_and_every_variant_pass(load_small):
    for spec in ("", ":seed_loss", ":seed", ":small"):
        config = config_lib.load_config(CONFIG + spec)
        TASK.check_config(config)
    TASK.check_config(load_small())


def test_user_data_fractions_are_checked_when_a_source_is_set(tmp_path, load_small):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    source = tmp_path / "objects.json"
    source.write_text(json.dumps({n: [[1, 1]] for n in ("a.png", "b.png", "c.png")}))
    config = load_small(f"data.source={source}", "data.num_train=0")  # Unused with a source.
    assert config.data.source == str(source)
    with pytest.raises(config_lib.ConfigError, match="data.val_fraction .0.6. and data.test_"):
        load_small(f"data.source={source}", "data.val_fraction=0.6", "data.test_fraction=0.5")


def test_a_missing_guard_section_is_named(tmp_path):
    path = tmp_path / "pointer_without_done_guard.py"
    path.write_text(
        "from jaxguard.configs.pointer import get_config as pointer_config\n\n\n"
        "def get_config():\n"
        "    config = pointer_config('small')\n"
        "    del config.guard['done_never_predicted']\n"
        "    return config\n"
    )
    with pytest.raises(config_lib.ConfigError, match="guard.done_never_predicted is missing"):
        config_lib.load_config(str(path))


@pytest.mark.parametrize(
    ("override", "new_key"),
    [
        ("model.head_grad_band=(1e-5, 10.0)", "guard.head_gradient_band.band"),
        ("model.done_guard_patience=2", "guard.done_never_predicted.patience"),
    ],
)
def test_the_old_guard_keys_name_their_new_place(load_small, override, new_key):
    with pytest.raises(config_lib.ConfigError, match=f"moved to {new_key}"):
        load_small(override)
