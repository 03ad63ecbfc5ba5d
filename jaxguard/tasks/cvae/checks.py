"""The cVAE task's config checks, run by `jaxguard.config.load_config` before anything is built.

`check_config` raises one `ConfigError` naming the first bad key of `data`, `model`, `loss`,
`guard.active_units` or `guard.volatility`. The embedded generator's sizes are checked here
too, so `data.generate` never sees a bad one. What only the data can tell (a user file's
problems, non-square fields with `data.augment.rotations`) is checked where the data are read
(`splits.make_splits`, `data.load_source`).
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from jaxguard.config import ConfigError
from jaxguard.tasks.cvae.guards import GUARD_NAMES
from jaxguard.tasks.cvae.model import MAX_DROPOUT, PRIORS


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _at_least(key: str, value, minimum: float) -> None:
    _require(value >= minimum, f"{key} must be >= {minimum}, got {value!r}")


def _finite_at_least_zero(key: str, value) -> None:
    _require(math.isfinite(value) and value >= 0, f"{key} must be finite and >= 0, got {value!r}")


def _is_name(value) -> bool:
    return isinstance(value, str) and bool(value)


def _check_names(d: ConfigDict) -> None:
    """The netCDF/zarr variable and dim names: non-empty strings, the dims all distinct."""
    _require(_is_name(d.field_var), f"data.field_var must be a variable name, got {d.field_var!r}")
    predictors = d.predictor_vars
    _require(
        isinstance(predictors, tuple | list)
        and len(predictors) >= 1
        and all(_is_name(v) for v in predictors)
        and len(set(predictors)) == len(predictors),
        f"data.predictor_vars must list one or more distinct variable names, got {predictors!r}",
    )
    _require(_is_name(d.time_dim), f"data.time_dim must be a dim name, got {d.time_dim!r}")
    for key in ("fine_dims", "coarse_dims"):
        dims = d[key]
        _require(
            isinstance(dims, tuple | list) and len(dims) == 2 and all(_is_name(v) for v in dims),
            f"data.{key} must be two dim names (y axis, x axis), got {dims!r}",
        )
    dims = [d.time_dim, *d.fine_dims, *d.coarse_dims]
    _require(
        len(set(dims)) == len(dims),
        f"data.time_dim, data.fine_dims and data.coarse_dims must be five distinct names (the "
        f"fine and coarse grids differ in size), got {dims}",
    )


def _check_data(d: ConfigDict) -> None:
    _check_names(d)
    if d.source:
        for key in ("val_fraction", "test_fraction"):
            _require(0.0 < d[key] < 1.0, f"data.{key} must lie in (0, 1), got {d[key]!r}")
        _require(
            d.val_fraction + d.test_fraction < 1.0,
            f"data.val_fraction + data.test_fraction must be < 1, got {d.val_fraction} + "
            f"{d.test_fraction}",
        )
    else:  # The embedded generator's settings.
        for key in ("num_train", "num_val", "num_test", "factor"):
            _at_least(f"data.{key}", d[key], 1)
        _at_least("data.fine_size", d.fine_size, 2)
        _require(
            d.fine_size % d.factor == 0,
            f"data.fine_size={d.fine_size} must be a multiple of data.factor={d.factor}",
        )
        _require(
            0.0 <= d.heavy_day_fraction <= 1.0,
            f"data.heavy_day_fraction must lie in [0, 1], got {d.heavy_day_fraction!r}",
        )
        _require(
            math.isfinite(d.heavy_peak_min) and d.heavy_peak_min > 0,
            f"data.heavy_peak_min must be finite and > 0, got {d.heavy_peak_min!r}",
        )
    _require(
        d.extreme_threshold > 0,
        f"data.extreme_threshold must be > 0, got {d.extreme_threshold!r}",
    )
    _require(
        d.extreme_quantile is None or 0.0 < d.extreme_quantile < 1.0,
        f"data.extreme_quantile must lie in (0, 1) or be None, got {d.extreme_quantile!r}",
    )
    _require(
        d.oversample_extremes >= 1,
        f"data.oversample_extremes must be >= 1 (1: no oversampling), got "
        f"{d.oversample_extremes!r}",
    )
    for key in ("input_noise", "mixup_alpha"):
        _finite_at_least_zero(f"data.augment.{key}", d.augment[key])


def _check_model(m: ConfigDict) -> None:
    _require(m.prior in PRIORS, f"model.prior must be one of {', '.join(PRIORS)}, got {m.prior!r}")
    for key in ("base_filters", "d_y", "d_z"):
        _at_least(f"model.{key}", m[key], 1)
    for key in ("encoder_dropout", "decoder_dropout"):
        _require(
            0.0 <= m[key] <= MAX_DROPOUT,
            f"model.{key} must lie in [0, {MAX_DROPOUT}], got {m[key]!r}",
        )
    _at_least("model.noise_channels", m.noise_channels, 0)
    _at_least("model.dry_threshold", m.dry_threshold, 0)
    for key in ("num_samples", "num_examples"):
        _at_least(f"model.sampling.{key}", m.sampling[key], 1)
    _at_least("model.sampling.seed", m.sampling.seed, 0)


def _check_loss(cfg: ConfigDict) -> None:
    for key in (
        "lambda_base",
        "lambda_crps",
        "lambda_ext",
        "beta",
        "lambda_mass",
        "beta_warmup_epochs",
    ):
        _at_least(f"loss.{key}", cfg[key], 0)
    # The fair CRPS compares members with each other: one member has no spread to score.
    _at_least("loss.crps_members", cfg.crps_members, 2)


def _check_guards(guard: ConfigDict) -> None:
    for name in GUARD_NAMES:
        _require(
            name in guard,
            f"guard.{name} is missing: the cvae task reads its settings (see configs/cvae.py)",
        )
    active = guard.active_units
    _require(
        0.0 <= active.min_active_fraction <= 1.0,
        f"guard.active_units.min_active_fraction must lie in [0, 1], got "
        f"{active.min_active_fraction!r}",
    )
    _at_least("guard.active_units.activity_threshold", active.activity_threshold, 0)
    _at_least("guard.active_units.start_epoch", active.start_epoch, 0)


def check_config(config: ConfigDict) -> None:
    """Raises `ConfigError` naming the first bad task key; returns None for a good config."""
    _check_data(config.data)
    _check_model(config.model)
    _check_loss(config.loss)
    _check_guards(config.guard)
