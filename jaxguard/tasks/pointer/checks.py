"""The pointer task's config checks, run by `jaxguard.config.load_config` before anything is built.

`check_config` raises one `ConfigError` naming the first bad key of `data`, `model`, `loss`,
`guard.head_gradient_band` or `guard.done_never_predicted`. What only the data can tell (a
user file's contents, a training split without both done classes for `pos_weight="auto"`) is
checked where the data are read.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords, data, guards, sources
from jaxguard.tasks.pointer.loss import NORMS, SPATIAL_LOSSES, parse_pos_weight
from jaxguard.tasks.pointer.model import DONE_INPUTS

# Keys of the task's guard sections (each section is required; `enabled` switches it off).
GUARD_KEYS = {
    guards.HeadGradientBand.name: ("enabled", "band"),
    guards.DoneNeverPredicted.name: ("enabled", "patience"),
    guards.LenientThreshold.name: ("enabled", "miss_px", "max_share", "patience"),
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(value: str, key: str, choices) -> None:
    _require(value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _check_data(config: ConfigDict) -> None:
    d = config.data
    if d.source:
        sources.check_source(d.source)
        sources.check_fractions(d.val_fraction, d.test_fraction)
    else:
        data.check_generator_settings(
            num_train=d.num_train,
            num_val=d.num_val,
            num_test=d.num_test,
            image_size=d.image_size,
            objects_min=d.objects_min,
            objects_max=d.objects_max,
            object_radius=d.object_radius,
            noise=d.noise,
            detour_rate=d.detour_rate,
        )
    data.check_example_settings(d.done_fraction, d.examples_per_image)


def _check_model(m: ConfigDict) -> None:
    for key in ("work_size", "features"):
        _require(m[key] >= 1, f"model.{key} must be >= 1, got {m[key]}")
    for key in ("mark_sigma", "attention_scale"):
        _require(
            math.isfinite(m[key]) and m[key] > 0,
            f"model.{key} must be finite and > 0, got {m[key]}",
        )
    _require(
        math.isfinite(m.head_init_std) and m.head_init_std >= 0,
        f"model.head_init_std must be finite and >= 0, got {m.head_init_std}",
    )
    _require(
        all(d >= 1 for d in m.dilations),
        f"model.dilations must hold dilations >= 1, got {tuple(m.dilations)}",
    )
    _choice(m.done_input, "model.done_input", DONE_INPUTS)


def _check_loss(cfg: ConfigDict) -> None:
    _choice(cfg.spatial, "loss.spatial", tuple(SPATIAL_LOSSES))
    _choice(cfg.norm, "loss.norm", NORMS)
    _choice(cfg.threshold_units, "loss.threshold_units", coords.THRESHOLD_UNITS)
    _require(
        math.isfinite(cfg.threshold) and cfg.threshold > 0,
        f"loss.threshold must be finite and > 0, got {cfg.threshold}",
    )
    _require(cfg.done_weight >= 0, f"loss.done_weight must be >= 0, got {cfg.done_weight}")
    parse_pos_weight(cfg.pos_weight)


def _check_guards(guard: ConfigDict) -> None:
    for name, keys in GUARD_KEYS.items():
        _require(name in guard, f"guard.{name} is missing (configs/pointer.py sets it)")
        for key in keys:
            _require(key in guard[name], f"guard.{name}.{key} is missing")
    guards.check_band(guard.head_gradient_band.band)
    guards.check_patience(guard.done_never_predicted.patience)
    guards.check_miss_px(guard.lenient_threshold.miss_px)
    guards.check_share(guard.lenient_threshold.max_share)
    guards.check_patience(guard.lenient_threshold.patience)


def check_config(config: ConfigDict) -> None:
    """The task's keys: one ConfigError naming the first bad one."""
    _check_data(config)
    _check_model(config.model)
    _check_loss(config.loss)
    _check_guards(config.guard)
