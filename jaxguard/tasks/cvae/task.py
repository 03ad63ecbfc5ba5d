"""The cVAE precipitation-downscaling task (seed 002) as the harness sees it.

Coarse predictors `y` `[batch, h, w, C]` and the fine daily precipitation field
`x` `[batch, H, W]` (mm/day). The loss is the declared composite

    lambda_base * MAE + lambda_ext * extreme MAE + beta(step) * KL + lambda_mass * mass

with the extreme MAE averaged per sample over the samples that hold extreme pixels
(`jaxguard.losses.extreme_mae`, no batch-ratio scaling), `beta` warmed up linearly
by an optax schedule over `loss.beta_warmup_epochs`, and the mass term comparing the
block means of the reconstruction with those of the truth. The `:ratio_bug`
variant swaps the extreme term for `seed002_ratio_scaled_extreme_mae`, the seed's bug.

Validation metrics (`CVAEMetrics`): the field metrics of `ExtremeMetrics` on the
*generated* field (decoded from the prior mean, without looking at `x`: what a user
gets when downscaling), `recon_*` on the reconstruction through the posterior mean,
the KL in total and per latent dimension, the number of active latent units, the
seed's reconstruction loss `rec_loss` and the mass-conservation error.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from ml_collections import ConfigDict

from jaxguard import guards as guards_lib
from jaxguard import losses
from jaxguard import trainer as trainer_lib
from jaxguard.config import ConfigError
from jaxguard.metrics import ExtremeMetrics, Moments
from jaxguard.tasks.cvae import data as data_lib
from jaxguard.tasks.cvae import panel
from jaxguard.tasks.cvae.model import PRIORS, DownscalingCVAE

# (label, validation metric key) pairs of the per-epoch console line.
EPOCH_LINE = (
    ("MAE", "mae_all"),
    ("tail MAE", "mae_tail"),
    ("rec loss", "rec_loss"),
    ("KL", "kl"),
    ("active units", "active_units"),
)
# Metrics of the fixed validation batch logged every `log.diagnostics_every_steps`.
DIAGNOSTIC_KEYS = ("mae_all", "recon_mae_all", "correlation", "kl", "active_units")

# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _raw_splits_cached(data_json: str, seed: int) -> dict[str, dict[str, np.ndarray]]:
    d = json.loads(data_json)
    if d["source"]:
        return data_lib.load_npz(
            d["source"], val_fraction=d["val_fraction"], test_fraction=d["test_fraction"]
        )
    return data_lib.generate(
        num_train=d["num_train"],
        num_val=d["num_val"],
        num_test=d["num_test"],
        fine_size=d["fine_size"],
        factor=d["factor"],
        heavy_day_fraction=d["heavy_day_fraction"],
        heavy_peak_min=d["heavy_peak_min"],
        seed=seed,
    )


def _raw_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """The splits before any task-side processing; read or generated once per process."""
    return _raw_splits_cached(config.data.to_json(sort_keys=True), config.seed)


def extreme_threshold(config: ConfigDict) -> float:
    """`data.extreme_threshold`, or the `data.extreme_quantile` of the training pixels if set."""
    if config.data.extreme_quantile is None:
        return float(config.data.extreme_threshold)
    train_x = _raw_splits(config)["train"]["x"]
    return float(np.quantile(train_x, config.data.extreme_quantile))


def _check_config(config: ConfigDict) -> None:
    d, m, cfg = config.data, config.model, config.loss
    checks = (
        (m.prior in PRIORS, f"model.prior must be one of {', '.join(PRIORS)}, got {m.prior!r}"),
        (d.oversample_extremes >= 1, "data.oversample_extremes must be >= 1 (1: no oversampling)"),
        (
            d.extreme_threshold > 0,
            f"data.extreme_threshold must be > 0, got {d.extreme_threshold!r}",
        ),
        (
            d.extreme_quantile is None or 0.0 < d.extreme_quantile < 1.0,
            f"data.extreme_quantile must lie in (0, 1) or be None, got {d.extreme_quantile!r}",
        ),
        (
            min(cfg.lambda_base, cfg.lambda_ext, cfg.beta, cfg.lambda_mass) >= 0,
            "loss.lambda_base, lambda_ext, beta and lambda_mass must be >= 0",
        ),
        (cfg.beta_warmup_epochs >= 0, "loss.beta_warmup_epochs must be >= 0"),
        (
            m.sampling.num_samples >= 1 and m.sampling.num_examples >= 1,
            "model.sampling.num_samples and num_examples must be >= 1",
        ),
        (
            0.0 <= m.collapse_guard.min_active_fraction <= 1.0,
            "model.collapse_guard.min_active_fraction must lie in [0, 1]",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """Embedded or user data, with the coarse mass targets and the extreme-day flags.

    Each split holds `x` `[N, H, W]`, `y` `[N, h, w, C]`, `coarse_target`
    `[N, h, w]` (block means of `x`) and `has_extreme` `[N]` (1.0 where some pixel
    exceeds the extreme threshold). With `data.oversample_extremes = k > 1` the
    training split holds every extreme day `k` times.
    """
    _check_config(config)
    raw = _raw_splits(config)
    x, y = raw["train"]["x"], raw["train"]["y"]
    factor = x.shape[1] // y.shape[1]
    if config.data.augment.rotations and x.shape[1] != x.shape[2]:
        raise ConfigError(
            f"data.augment.rotations needs square fields, got {x.shape[1]}x{x.shape[2]}"
        )
    threshold = extreme_threshold(config)
    splits = {}
    for name, split in raw.items():
        fields = split["x"]
        maxima = fields.reshape(len(fields), -1).max(axis=1)
        splits[name] = {
            "x": fields,
            "y": split["y"],
            "coarse_target": data_lib.coarsen(fields, factor).astype(np.float32),
            "has_extreme": (maxima > threshold).astype(np.float32),
        }
    repeats = config.data.oversample_extremes
    if repeats > 1:
        train = splits["train"]
        extra = np.repeat(np.flatnonzero(train["has_extreme"]), repeats - 1)
        order = np.concatenate([np.arange(len(train["x"])), extra])
        splits["train"] = {key: values[order] for key, values in train.items()}
    return splits


# ----------------------------------------------------------------------------- model and loss


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> DownscalingCVAE:
    m, augment = config.model, config.data.augment
    train = _raw_splits(config)["train"]  # Statistics of the samples, before oversampling.
    del splits
    return DownscalingCVAE(
        fine_shape=tuple(train["x"].shape[1:]),
        coarse_shape=tuple(train["y"].shape[1:]),
        base_filters=m.base_filters,
        d_y=m.d_y,
        d_z=m.d_z,
        encoder_dropout=m.encoder_dropout,
        decoder_dropout=m.decoder_dropout,
        prior=m.prior,
        predictor_mean=train["y"].mean(axis=(0, 1, 2)),
        predictor_std=train["y"].std(axis=(0, 1, 2)),
        # Why the std and not the mean: the output must reach the tail, not the typical day.
        output_scale=max(float(train["x"].std()), 1e-3),
        augmentation={
            "flips": augment.flips,
            "rotations": augment.rotations,
            "input_noise": augment.input_noise,
            "mixup_alpha": augment.mixup_alpha,
        },
        rngs=rngs,
    )


def seed002_ratio_scaled_extreme_mae(
    pred: jax.Array, target: jax.Array, *, threshold: float
) -> jax.Array:
    """Reproduction of seed 002's bug: the extreme MAE scaled by the share of extreme samples.

    `extreme_mae(pred, target) * |S| / batch`, with `S` the samples holding a pixel
    above `threshold`: the `extreme_sample_ratio` the seed's first fix multiplied in.
    With 1.3% extreme days most batches hold none or one, so `lambda_ext` acts as
    roughly `lambda_ext / batch_size`. Only the `:ratio_bug` config uses it, to
    compare with the fixed loss; do not train with it otherwise.

    Args:
      pred: predicted fields `[batch, H, W]` (mm/day).
      target: true fields, same shape.
      threshold: extreme-pixel threshold (mm/day).

    Returns:
      Scalar `[]`.
    """
    axes = tuple(range(1, target.ndim))
    share = jnp.mean(jnp.any(target > threshold, axis=axes).astype(pred.dtype))
    return losses.extreme_mae(pred, target, threshold=threshold) * share


def extreme_term_name(config: ConfigDict) -> str:
    return "extreme_ratio_bug" if config.loss.extreme_ratio_scaling else "extreme"


def beta_warmup_steps(config: ConfigDict, steps_per_epoch: int) -> int:
    return int(round(config.loss.beta_warmup_epochs * steps_per_epoch))


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    cfg = config.loss
    threshold = extreme_threshold(config)
    factor = splits["train"]["x"].shape[1] // splits["train"]["y"].shape[1]
    extreme_fn = (
        seed002_ratio_scaled_extreme_mae if cfg.extreme_ratio_scaling else losses.extreme_mae
    )
    return losses.compose(
        mae=losses.Term(losses.absolute_error, weight=cfg.lambda_base),
        **{
            extreme_term_name(config): losses.Term(
                functools.partial(extreme_fn, threshold=threshold), weight=cfg.lambda_ext
            )
        },
        kl=losses.Term(
            losses.gaussian_kl,
            inputs=("mean", "logvar", "prior_mean", "prior_logvar"),
            weight=losses.beta_warmup(cfg.beta, beta_warmup_steps(config, steps_per_epoch)),
        ),
        mass=losses.Term(
            functools.partial(losses.mass_conservation, factor=factor),
            inputs=("pred", "coarse_target"),
            weight=cfg.lambda_mass,
        ),
    )


def forward(model: DownscalingCVAE, batch) -> dict[str, jax.Array]:
    """Model outputs plus the (augmented, in train mode) `target` and `coarse_target`.

    A batch may carry `latent_noise` `[B, d_z]`: `generated` is then decoded from
    `prior_mean + prior_std * latent_noise`, one ensemble member per row.
    """
    x, y, coarse = model.augment(batch["x"], batch["y"], batch["coarse_target"])
    outputs = model(x, y, batch.get("latent_noise"))
    outputs["target"] = x
    outputs["coarse_target"] = coarse
    return outputs


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    del batch  # The target may have been augmented: forward returns the one the model saw.
    keys = ("pred", "target", "mean", "logvar", "prior_mean", "prior_logvar", "coarse_target")
    return {key: outputs[key] for key in keys}


def head(model: DownscalingCVAE) -> nnx.Module:
    return model.head


# ----------------------------------------------------------------------------- metrics


@struct.dataclass
class CVAEMetrics:
    """Streaming validation metrics of the cVAE: fields, latent space and reconstruction loss.

    `compute()` keys:
      mae_all, mae_tail, rmse_tail, correlation, extreme_freq_true, extreme_freq_pred,
        count, count_tail, nonfinite: `ExtremeMetrics` of the generated field (prior
        mean, `x` unseen) against the truth.
      recon_mae_all, recon_mae_tail: the same errors for the reconstruction through the
        posterior mean.
      extreme_mae: the reconstruction's extreme MAE, averaged per sample over the
        samples of the split that hold extreme pixels (0 when none do).
      rec_loss: `lambda_base * recon_mae_all + lambda_ext * extreme_mae`, the seed's
        validation reconstruction loss.
      kl: mean KL(q(z | x, y) || p(z | y)) per sample, nats; kl_dim_NN: its share per
        latent dimension (they sum to kl).
      active_units: latent dimensions whose posterior mean (relative to the prior
        mean) varies across the split with variance above `activity_threshold`
        (Burda et al. 2016); fewer active units = posterior collapse.
      bias_tail: mean signed error of the generated field over the tail pixels (mm/day);
        negative = extremes underpredicted.
      peak_ratio: over the samples holding extremes, the sum of the generated fields'
        maxima divided by the sum of the true maxima.
      mass_error: mean absolute difference between the block means of the generated
        field and of the truth (mm/day).
    """

    generated: ExtremeMetrics
    reconstructed: ExtremeMetrics
    kl_sum: jax.Array  # [d_z] sum over samples of the per-dimension KL.
    posterior_offsets: Moments  # Of posterior mean - prior mean, one variable per dimension.
    extreme_mae_sum: jax.Array
    samples_with_extremes: jax.Array
    tail_error_sum: jax.Array  # Signed error of the generated field over tail pixels.
    generated_peak_sum: jax.Array  # Over samples with extremes: sum of generated maxima.
    true_peak_sum: jax.Array  # ... and of true maxima.
    mass_error_sum: jax.Array
    lambda_base: float = struct.field(pytree_node=False)
    lambda_ext: float = struct.field(pytree_node=False)
    activity_threshold: float = struct.field(pytree_node=False)
    factor: int = struct.field(pytree_node=False)

    @classmethod
    def empty(
        cls,
        *,
        threshold: float,
        d_z: int,
        factor: int,
        lambda_base: float,
        lambda_ext: float,
        activity_threshold: float,
    ) -> CVAEMetrics:
        zero = jnp.zeros((), jnp.float32)
        return cls(
            generated=ExtremeMetrics.empty(threshold),
            reconstructed=ExtremeMetrics.empty(threshold),
            kl_sum=jnp.zeros((d_z,), jnp.float32),
            posterior_offsets=Moments.empty(d_z),
            extreme_mae_sum=zero,
            samples_with_extremes=jnp.zeros((), jnp.int32),
            tail_error_sum=zero,
            generated_peak_sum=zero,
            true_peak_sum=zero,
            mass_error_sum=zero,
            lambda_base=float(lambda_base),
            lambda_ext=float(lambda_ext),
            activity_threshold=float(activity_threshold),
            factor=int(factor),
        )

    def update(self, outputs: Mapping[str, jax.Array], target: jax.Array, coarse_target):
        """Adds a batch of model outputs (eval mode) with its `[B, H, W]` and `[B, h, w]` truth."""
        threshold = self.generated.threshold
        pred, generated = outputs["pred"], outputs["generated"]
        kl = losses.gaussian_kl_per_dim(
            outputs["mean"], outputs["logvar"], outputs["prior_mean"], outputs["prior_logvar"]
        )
        offsets = outputs["mean"] - outputs["prior_mean"]
        everyone = jnp.ones(offsets.shape[:1], bool)
        # extreme_mae of one sample at a time: its per-sample value, 0 without extremes.
        per_sample = jax.vmap(
            lambda p, t: losses.extreme_mae(p[None], t[None], threshold=threshold)
        )(pred, target)
        field_axes = tuple(range(1, target.ndim))
        has_extreme = jnp.any(target > threshold, axis=field_axes)
        tail_error = jnp.where(target > threshold, generated - target, 0.0)
        peaks = lambda field: jnp.sum(jnp.where(has_extreme, jnp.max(field, axis=field_axes), 0))
        mass = losses.mass_conservation(generated, coarse_target, factor=self.factor)
        return self.replace(
            generated=self.generated.update(generated, target),
            reconstructed=self.reconstructed.update(pred, target),
            kl_sum=self.kl_sum + jnp.sum(kl, axis=0),
            posterior_offsets=self.posterior_offsets.merge(Moments.from_batch(offsets, everyone)),
            extreme_mae_sum=self.extreme_mae_sum + jnp.sum(jnp.where(has_extreme, per_sample, 0)),
            samples_with_extremes=self.samples_with_extremes
            + jnp.sum(has_extreme, dtype=jnp.int32),
            tail_error_sum=self.tail_error_sum + jnp.sum(tail_error),
            generated_peak_sum=self.generated_peak_sum + peaks(generated),
            true_peak_sum=self.true_peak_sum + peaks(target),
            mass_error_sum=self.mass_error_sum + jnp.sum(mass),
        )

    def merge(self, other: CVAEMetrics) -> CVAEMetrics:
        return self.replace(
            generated=self.generated.merge(other.generated),
            reconstructed=self.reconstructed.merge(other.reconstructed),
            kl_sum=self.kl_sum + other.kl_sum,
            posterior_offsets=self.posterior_offsets.merge(other.posterior_offsets),
            extreme_mae_sum=self.extreme_mae_sum + other.extreme_mae_sum,
            samples_with_extremes=self.samples_with_extremes + other.samples_with_extremes,
            tail_error_sum=self.tail_error_sum + other.tail_error_sum,
            generated_peak_sum=self.generated_peak_sum + other.generated_peak_sum,
            true_peak_sum=self.true_peak_sum + other.true_peak_sum,
            mass_error_sum=self.mass_error_sum + other.mass_error_sum,
        )

    def compute(self) -> dict[str, float]:
        state = jax.device_get(self)
        result = dict(state.generated.compute())
        reconstructed = state.reconstructed.compute()
        result["recon_mae_all"] = reconstructed["mae_all"]
        result["recon_mae_tail"] = reconstructed["mae_tail"]
        count = int(state.posterior_offsets.count)
        with_extremes = int(state.samples_with_extremes)
        # No extreme sample in the split: the loss term is 0 there too.
        extreme_mae = float(state.extreme_mae_sum) / with_extremes if with_extremes else 0.0
        result["extreme_mae"] = extreme_mae
        result["rec_loss"] = (
            state.lambda_base * result["recon_mae_all"] + state.lambda_ext * extreme_mae
        )
        kl_per_dim = (
            np.asarray(state.kl_sum, np.float64) / count
            if count
            else np.full(state.kl_sum.shape, math.nan)
        )
        result["kl"] = float(np.sum(kl_per_dim))
        for index, value in enumerate(kl_per_dim):
            result[f"kl_dim_{index:02d}"] = float(value)
        # Why `> threshold` on NaN-free values only: an empty split has NaN variances, 0 active.
        variances = state.posterior_offsets.variances()
        result["active_units"] = float(np.sum(np.nan_to_num(variances) > state.activity_threshold))
        count_tail = int(state.generated.count_tail)
        result["bias_tail"] = float(state.tail_error_sum) / count_tail if count_tail else math.nan
        true_peaks = float(state.true_peak_sum)
        result["peak_ratio"] = (
            float(state.generated_peak_sum) / true_peaks if true_peaks else math.nan
        )
        result["mass_error"] = float(state.mass_error_sum) / count if count else math.nan
        return result


def empty_metrics(config: ConfigDict) -> CVAEMetrics:
    raw = _raw_splits(config)["train"]
    return CVAEMetrics.empty(
        threshold=extreme_threshold(config),
        d_z=config.model.d_z,
        factor=raw["x"].shape[1] // raw["y"].shape[1],
        lambda_base=config.loss.lambda_base,
        lambda_ext=config.loss.lambda_ext,
        activity_threshold=config.model.collapse_guard.activity_threshold,
    )


def update_metrics(metrics: CVAEMetrics, outputs, batch) -> CVAEMetrics:
    return metrics.update(outputs, batch["x"], batch["coarse_target"])


# ----------------------------------------------------------------------------- guards


class ActiveUnitsGuard:
    """Warns when fewer than `min_fraction * d_z` latent units are active (posterior collapse).

    A collapsed unit's posterior equals its prior for every sample: the decoder
    ignores it and the KL there is ~0. The guard reads `active_units` from the
    validation metrics; it warns when the count drops below the bound and reports
    (info) when it recovers.
    """

    def __init__(
        self, *, d_z: int, min_fraction: float, activity_threshold: float, start_epoch: int
    ):
        self.d_z = d_z
        self.min_fraction = min_fraction
        self.activity_threshold = activity_threshold
        self.start_epoch = start_epoch
        self._collapsed = False

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        if epoch < self.start_epoch:
            return None
        active = int(metrics["active_units"])
        bound = self.min_fraction * self.d_z
        if active < bound and not self._collapsed:
            self._collapsed = True
            return guards_lib.GuardEvent(
                "posterior_collapse",
                "warn",
                f"posterior collapse at epoch {epoch}: {active} of {self.d_z} latent units "
                f"active (posterior-mean variance > {self.activity_threshold:g}), below "
                f"{self.min_fraction:.0%} of them; KL {metrics['kl']:.4g} nats. The decoder is "
                "ignoring z: lower loss.beta or lengthen loss.beta_warmup_epochs",
                epoch,
            )
        if active >= bound and self._collapsed:
            self._collapsed = False
            return guards_lib.GuardEvent(
                "posterior_collapse",
                "info",
                f"latent units active again at epoch {epoch}: {active} of {self.d_z}",
                epoch,
            )
        return None

    def state_dict(self) -> dict:
        return {"collapsed": self._collapsed}

    def load_state_dict(self, state: Mapping) -> None:
        self._collapsed = bool(state["collapsed"])


class VolatilityGuard:
    """Warns when the validation reconstruction loss jumps between epochs (seed 002's symptom).

    The seed's `val_L_rec` went from 2.13 at epoch 5 to 6.55 at epoch 22 with
    `lambda_ext = 10`: the extreme term on a handful of heavy days dominated it.
    The guard compares `rec_loss` with the previous evaluation's and warns when
    the relative change exceeds `warn_change`; the run's report summarizes the
    epoch-to-epoch changes from log.csv.
    """

    def __init__(self, *, warn_change: float):
        self.warn_change = warn_change
        self._previous: tuple[int, float] | None = None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        value = float(metrics["rec_loss"])
        previous, self._previous = self._previous, (epoch, value)
        if previous is None or not math.isfinite(value) or previous[1] == 0:
            return None
        change = (value - previous[1]) / abs(previous[1])
        if abs(change) <= self.warn_change:
            return None
        return guards_lib.GuardEvent(
            "volatility",
            "warn",
            f"validation reconstruction loss changed {change:+.0%} from epoch {previous[0]} "
            f"({previous[1]:.4g}) to epoch {epoch} ({value:.4g}); a few heavy days drive the "
            "extreme term (seed 002): oversample them (data.oversample_extremes) or lower "
            "loss.lambda_ext",
            epoch,
        )

    def state_dict(self) -> dict:
        return {"previous": self._previous}

    def load_state_dict(self, state: Mapping) -> None:
        self._previous = tuple(state["previous"]) if state["previous"] is not None else None


def make_guards(config: ConfigDict, splits) -> dict:
    del splits
    m = config.model
    found = {}
    if m.collapse_guard.enabled:
        found["posterior_collapse"] = ActiveUnitsGuard(
            d_z=m.d_z,
            min_fraction=m.collapse_guard.min_active_fraction,
            activity_threshold=m.collapse_guard.activity_threshold,
            start_epoch=m.collapse_guard.start_epoch,
        )
    if m.volatility_warn_change > 0:
        found["volatility"] = VolatilityGuard(warn_change=m.volatility_warn_change)
    return found


# ----------------------------------------------------------------------------- reporting


def _extreme_share(split) -> str:
    flags = split["has_extreme"]
    return f"{int(flags.sum())} of {len(flags)} ({flags.mean():.1%})"


def startup_lines(config: ConfigDict, splits) -> list[str]:
    raw = _raw_splits(config)
    train = raw["train"]
    x = train["x"]
    threshold = extreme_threshold(config)
    source = config.data.source or "embedded generator"
    flags = {name: (s["x"].reshape(len(s["x"]), -1).max(1) > threshold) for name, s in raw.items()}
    lines = [
        f"data: {source}; x {x.shape[1]}x{x.shape[2]} mm/day from y "
        f"{'x'.join(map(str, train['y'].shape[1:]))}; {len(x)} train / {len(raw['val']['x'])} val "
        f"/ {len(raw['test']['x'])} test samples; train x mean {x.mean():.3g}, dry pixels "
        f"{np.mean(x <= 0):.0%}, 99.9th percentile {np.quantile(x, 0.999):.3g}",
        f"extremes: x > {threshold:.4g} mm/day in "
        + ", ".join(
            f"{name} {int(f.sum())} of {len(f)} samples ({f.mean():.1%})"
            for name, f in flags.items()
        ),
    ]
    repeats = config.data.oversample_extremes
    if repeats > 1:
        lines.append(
            f"oversampling: each extreme training sample {repeats}x, {len(splits['train']['x'])} "
            f"training rows from {len(x)} samples"
        )
    augment = config.data.augment
    used = [
        name
        for name, on in (
            ("flips", augment.flips),
            ("rotations", augment.rotations),
            (f"input noise {augment.input_noise:g}", augment.input_noise > 0),
            (f"mixup alpha {augment.mixup_alpha:g}", augment.mixup_alpha > 0),
        )
        if on
    ]
    if used:
        lines.append("augmentation: " + ", ".join(used))
    warning = guards_lib.warmup_vs_early_stopping_warning(
        config.loss.beta_warmup_epochs,
        config.guard.early_stopping,
        eval_every_epochs=config.eval.every_epochs,
    )
    if warning:
        lines.append(f"warning: KL weight warm-up: {warning}")
    if config.loss.extreme_ratio_scaling:
        lines.append(
            "warning: loss.extreme_ratio_scaling reproduces seed 002's bug: the extreme term is "
            "multiplied by the share of batch samples holding extremes "
            f"({flags['train'].mean():.1%} of training samples), so "
            f"lambda_ext={config.loss.lambda_ext:g} acts as far less"
        )
    return lines


def audit(config: ConfigDict, splits) -> dict:
    """Extreme days and pixels of every split and how often a batch sees one (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures (high-resolution
      fields `x`, mm/day; the training split as training sees it, oversampled days
      repeated): `days`, `extreme_days` and `extreme_day_rate` (days with some pixel
      above the extreme threshold), `extreme_pixels` and `extreme_pixel_rate`, `mean`,
      `dry_pixels` (share <= 0), `q999` (99.9th percentile) and `max`.
    """
    threshold = extreme_threshold(config)
    result: dict = {}
    for name, split in splits.items():
        x = np.asarray(split["x"], np.float64)
        extreme = x > threshold
        extreme_days = int(np.sum(split["has_extreme"] > 0))
        result[name] = {
            "days": len(x),
            "extreme_days": extreme_days,
            "extreme_day_rate": extreme_days / len(x),
            "extreme_pixels": int(extreme.sum()),
            "extreme_pixel_rate": float(extreme.mean()),
            "mean": float(x.mean()),
            "dry_pixels": float(np.mean(x <= 0)),
            "q999": float(np.quantile(x, 0.999)),
            "max": float(x.max()),
        }
    train, batch = result["train"], config.train.batch_size
    rate = train["extreme_day_rate"]
    # Batches drawn without replacement from the shuffled split; with replacement is close.
    with_extreme = 1.0 - (1.0 - rate) ** batch
    advice = [
        f"extreme: x > {threshold:.4g} mm/day; train: {rate:.2%} of days, "
        f"{train['extreme_pixel_rate']:.3%} of pixels",
        f"a batch of {batch} holds an extreme day {with_extreme:.0%} of the time: the extreme "
        f"term (lambda_ext={config.loss.lambda_ext:g}) is 0 in the other batches, so the "
        "training loss jumps between the two kinds of batch"
        + (
            "; data.oversample_extremes=k repeats each extreme day k times"
            if config.data.oversample_extremes == 1
            else ""
        ),
    ]
    if config.loss.extreme_ratio_scaling:
        advice.append(
            "loss.extreme_ratio_scaling is on (seed 002's bug): the extreme term is scaled by "
            "the share of batch samples with extremes, so lambda_ext acts as far less"
        )
    for name in ("val", "test"):
        days = result[name]["extreme_days"]
        if days == 0:
            advice.append(f"{name} has no extreme day: its tail MAE is undefined")
        elif days < 20:
            advice.append(
                f"{name} has {days} extreme days: its tail MAE rests on few days and moves "
                f"a lot between runs; more days (data.num_{name}) give steadier figures"
            )
    result["recommendations"] = advice
    return result


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    return {
        "generated": np.asarray(outputs["generated"]),
        "targets": np.asarray(batch["x"]),
        "posterior_mean": np.asarray(outputs["mean"]),
    }


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    """One row per test sample: field maxima and means, errors, the extreme flag and the KL."""
    target = np.asarray(batch["x"], np.float64)
    generated = np.asarray(outputs["generated"], np.float64)
    pred = np.asarray(outputs["pred"], np.float64)
    flat = lambda a: a.reshape(len(a), -1)
    kl = np.asarray(
        losses.gaussian_kl(
            outputs["mean"], outputs["logvar"], outputs["prior_mean"], outputs["prior_logvar"]
        )
    )
    return {
        "has_extreme": batch["has_extreme"],
        "true_max": flat(target).max(1),
        "generated_max": flat(generated).max(1),
        "reconstructed_max": flat(pred).max(1),
        "true_mean": flat(target).mean(1),
        "generated_mean": flat(generated).mean(1),
        "generated_mae": np.abs(flat(generated) - flat(target)).mean(1),
        "reconstructed_mae": np.abs(flat(pred) - flat(target)).mean(1),
        "kl": kl,
    }


def _volatility_summary(workdir: str) -> str | None:
    """Epoch-to-epoch change of val_rec_loss from the run's log.csv, as one report line."""
    path = os.path.join(workdir, "log.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        values = [float(row["val_rec_loss"]) for row in csv.DictReader(f)]
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return None
    changes = [(b - a) / abs(a) for a, b in zip(values, values[1:], strict=False) if a]
    largest = max(changes, key=abs)
    return (
        f"validation reconstruction loss over {len(values)} epochs: {min(values):.4g} to "
        f"{max(values):.4g} (max/min {max(values) / min(values):.2f}); largest epoch-to-epoch "
        f"change {largest:+.0%}, median |change| {np.median(np.abs(changes)):.0%}"
    )


def report_lines(config: ConfigDict, splits, summary: Mapping) -> list[str]:
    test = summary["test"]
    stopped = summary["stopped_by"]
    unique_train = len(_raw_splits(config)["train"]["x"])
    steps = trainer_lib.steps_per_epoch(config, len(splits["train"]["x"]))
    warmup_steps = beta_warmup_steps(config, steps)
    best_step = (summary["best_epoch"] + 1) * steps
    beta_share = min(best_step / warmup_steps, 1.0) if warmup_steps else 1.0
    lines = [
        f"cVAE downscaling (seed {config.seed}), workdir {summary['workdir']}",
        f"loss: lambda_base {config.loss.lambda_base:g}, lambda_ext {config.loss.lambda_ext:g} "
        f"({'ratio-scaled, seed 002 bug' if config.loss.extreme_ratio_scaling else 'as given'}), "
        f"beta {config.loss.beta:g} warmed up over {config.loss.beta_warmup_epochs:g} epochs, "
        f"lambda_mass {config.loss.lambda_mass:g}",
        f"parameters {summary['param_count']:,}, {summary['param_count'] / unique_train:.0f} per "
        f"training sample ({unique_train} samples)",
        f"test split: {_extreme_share(splits['test'])} samples hold pixels above "
        f"{extreme_threshold(config):.4g} mm/day ({int(test['count_tail'])} pixels)",
        f"generated (prior mean, x unseen): MAE {test['mae_all']:.4f}, tail MAE "
        f"{test['mae_tail']:.4f}, tail RMSE {test['rmse_tail']:.4f}, correlation "
        f"{test['correlation']:.3f}",
        f"tail bias {test['bias_tail']:+.3f} mm/day; heavy-day peaks at "
        f"{test['peak_ratio']:.0%} of the truth; extreme frequency: predicted "
        f"{test['extreme_freq_pred']:.3%} vs true {test['extreme_freq_true']:.3%}",
        f"reconstructed (posterior mean): MAE {test['recon_mae_all']:.4f}, tail MAE "
        f"{test['recon_mae_tail']:.4f}",
        f"KL {test['kl']:.4g} nats, active latent units {int(test['active_units'])} of "
        f"{config.model.d_z}, mass error {test['mass_error']:.4f} mm/day",
        f"best epoch {summary['best_epoch']} of {summary['epochs_run']} run (by "
        f"{config.guard.early_stopping.monitor}), KL weight there {beta_share:.0%} of "
        f"loss.beta; {summary['train_seconds']:.0f} s of training",
        "stopped by: " + (stopped["message"] if stopped else "the epoch budget"),
    ]
    volatility = _volatility_summary(summary["workdir"])
    if volatility:
        lines.append(volatility)
    return lines


# ----------------------------------------------------------------------------- panels


def export(config: ConfigDict, workdir: str, predict, splits) -> list[str]:
    """Draws an ensemble for a few test predictors with the best model; writes npz + PNG."""
    sampling = config.model.sampling
    test = splits["test"]
    indices = panel.panel_examples(test, sampling.num_examples, sampling.seed)
    truth = test["x"][indices]

    def generate(y, noise):
        repeats = len(y) // len(indices)
        batch = {
            "x": np.repeat(truth, repeats, axis=0),
            "y": y,
            "coarse_target": np.repeat(test["coarse_target"][indices], repeats, axis=0),
            "latent_noise": noise,
        }
        return predict(batch)["generated"]

    samples = panel.draw_ensemble(
        generate,
        test["y"][indices],
        num_samples=sampling.num_samples,
        d_z=config.model.d_z,
        seed=sampling.seed,
    )
    png_path, npz_path = panel.write_ensemble(
        os.path.join(workdir, "samples"),
        predictors=test["y"][indices],
        truth=truth,
        samples=samples,
        indices=indices,
        threshold=extreme_threshold(config),
    )
    description = panel.panel_description(indices, test["y"].shape[-1], True, sampling.num_samples)
    return [f"sample panel: {png_path} ({description})", f"samples: {npz_path}"]


def images(outputs, batch) -> dict[str, np.ndarray]:
    """TensorBoard: the heaviest validation day: predictors, truth, reconstruction, generated."""
    k = int(np.argmax(np.asarray(batch["x"]).reshape(len(batch["x"]), -1).max(axis=1)))
    fields = np.stack([outputs["pred"][k], outputs["generated"][k]])[None]
    image = panel.render_panel(
        np.asarray(batch["y"][k : k + 1]),
        np.asarray(batch["x"][k : k + 1]),
        np.asarray(fields),
        threshold=math.inf,  # No threshold reaches this hook; nothing is drawn red.
    )
    return {"val/heaviest_day": image}
