"""The surface task's config checks, run by `jaxguard.config.load_config` before anything is built.

`check_config` raises one `ConfigError` naming the first bad key of `data`, `model`, `loss`,
`guard.plateau` or `guard.majority_class`. What only the data can tell (a user file's
problems, a class missing from the training patches) is checked where the data are read.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from jaxguard.config import ConfigError
from jaxguard.tasks.surface.inference import BLENDS
from jaxguard.tasks.surface.loss import TERM_NAMES
from jaxguard.tasks.surface.model import NORMS

# Generator amplitudes that are spreads or strengths: negative values mean nothing.
_NON_NEGATIVE_DATA = ("fill_std", "warp", "fibre_contrast", "bias", "noise", "intensity_jitter")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_data(d: ConfigDict, depth: int) -> None:
    _require(
        d.patch_size >= 2 and d.patch_size % 2**depth == 0,
        f"data.patch_size={d.patch_size} must be divisible by 2**model.depth = {2**depth}",
    )
    _require(
        d.source or d.patch_size <= d.volume_size,
        f"data.patch_size={d.patch_size} is larger than data.volume_size={d.volume_size}",
    )
    _require(d.num_train_volumes >= 1, "data.num_train_volumes must be >= 1")
    for key in ("num_val_volumes", "num_test_volumes", "train_patches"):
        _require(d[key] >= 1, f"data.{key} must be >= 1, got {d[key]}")
    spacing = tuple(d.sheet_spacing)
    _require(
        len(spacing) == 2 and 0 < spacing[0] <= spacing[1],
        "data.sheet_spacing must be (low, high) with 0 < low <= high",
    )
    _require(0 < d.fill_mean < 1, f"data.fill_mean must lie in (0, 1), got {d.fill_mean}")
    _require(d.blur > 0, f"data.blur must be > 0, got {d.blur}")
    _require(0 < d.air_contrast <= 1, f"data.air_contrast must lie in (0, 1], got {d.air_contrast}")
    for key in _NON_NEGATIVE_DATA:
        _require(d[key] >= 0, f"data.{key} must be >= 0, got {d[key]}")
    _require(
        0 <= d.foreground_centre_prob <= 1,
        f"data.foreground_centre_prob must lie in [0, 1], got {d.foreground_centre_prob}",
    )
    _require(
        0 <= d.window_overlap < 1, f"data.window_overlap must lie in [0, 1), got {d.window_overlap}"
    )
    _require(
        d.window_blend in BLENDS,
        f"data.window_blend must be one of {', '.join(BLENDS)}, got {d.window_blend!r}",
    )


def _check_model(m: ConfigDict) -> None:
    for key in ("initial_filters", "depth"):
        _require(m[key] >= 1, f"model.{key} must be >= 1, got {m[key]}")
    _require(m.norm in NORMS, f"model.norm must be one of {', '.join(NORMS)}, got {m.norm!r}")
    if m.norm == "group":
        _require(m.norm_groups >= 1, f"model.norm_groups must be >= 1, got {m.norm_groups}")
        # GroupNorm uses min(groups, channels) groups, which must divide every level's channels.
        widths = [m.initial_filters * 2**level for level in range(m.depth + 1)]
        _require(
            all(width % min(m.norm_groups, width) == 0 for width in widths),
            f"model.norm_groups={m.norm_groups} must divide the channels of every level "
            f"({', '.join(map(str, widths))}, capped at the group count)",
        )
    # The UNet's own bound (dropout 1 would drop everything).
    _require(0 <= m.dropout <= 0.99, f"model.dropout must lie in [0, 0.99], got {m.dropout}")


def _check_loss(cfg: ConfigDict) -> None:
    for name in TERM_NAMES:
        key = f"{name}_weight"
        _require(cfg[key] >= 0, f"loss.{key} must be >= 0 (0 leaves the term out), got {cfg[key]}")
    _require(
        any(cfg[f"{name}_weight"] > 0 for name in TERM_NAMES),
        "loss: every term weight is 0; give at least one a weight > 0 "
        f"(loss.{'_weight, loss.'.join(TERM_NAMES)}_weight)",
    )
    alpha = cfg.focal_alpha
    _require(alpha is None or 0 <= alpha <= 1, f"loss.focal_alpha must lie in [0, 1], got {alpha}")
    _require(cfg.focal_gamma >= 0, f"loss.focal_gamma must be >= 0, got {cfg.focal_gamma}")
    for key in ("dice_smooth", "cldice_smooth"):
        _require(cfg[key] > 0, f"loss.{key} must be > 0, got {cfg[key]}")
    _require(
        cfg.cldice_iterations >= 0,
        f"loss.cldice_iterations must be >= 0, got {cfg.cldice_iterations}",
    )


def _check_guards(guard: ConfigDict) -> None:
    """The ranges the guards' constructors enforce, checked whether or not a guard is enabled."""
    plateau, majority = guard.plateau, guard.majority_class
    _require(plateau.patience >= 2, f"guard.plateau.patience must be >= 2, got {plateau.patience}")
    _require(
        math.isfinite(plateau.tolerance) and plateau.tolerance >= 0,
        f"guard.plateau.tolerance must be finite and >= 0, got {plateau.tolerance}",
    )
    _require(
        plateau.start_within >= 1,
        f"guard.plateau.start_within must be >= 1, got {plateau.start_within}",
    )
    _require(
        0 < majority.margin < 0.5,
        f"guard.majority_class.margin must lie in (0, 0.5), got {majority.margin}",
    )
    _require(
        majority.patience >= 1,
        f"guard.majority_class.patience must be >= 1, got {majority.patience}",
    )
    _require(
        majority.start_epoch >= 0,
        f"guard.majority_class.start_epoch must be >= 0, got {majority.start_epoch}",
    )


def check_config(config: ConfigDict) -> None:
    """The task's keys: one ConfigError naming the first bad one."""
    _check_model(config.model)
    _check_data(config.data, config.model.depth)
    _check_loss(config.loss)
    _check_guards(config.guard)
