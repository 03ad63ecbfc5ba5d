"""The cVAE task's validation and test metrics: `CVAEMetrics`, streamed over a split.

`CVAEMetrics` is a `flax.struct` pytree of sufficient statistics with
`empty / update / merge / compute` (the `jaxguard.metrics` design), so it accumulates inside
the jitted eval step and merges exactly across batches. It watches three things:

* the generated field (decoded from the prior mean, `x` unseen: what a user gets when
  downscaling), via the `ExtremeMetrics` of `generated` and the tail figures around it;
* the reconstruction through the posterior mean (`reconstructed`, `extreme_mae_sum`): the
  seed's validation reconstruction loss `rec_loss`;
* the latent space: the KL per dimension and the spread of the posterior means (`active_units`);
* the ensemble (`members` drawn from the prior, when the model draws them in eval mode):
  `jaxguard.metrics.EnsembleMetrics` over all pixels and over wet ones.

To add a statistic: a field (an array, or a mergeable metrics state), its zero in `empty`,
its batch contribution in `update`, its merge in `merge` and its figures in `compute`.
`empty_metrics(config)` and `update_metrics(metrics, outputs, batch)` are the harness hooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.metrics import EnsembleMetrics, ExtremeMetrics, Moments
from jaxguard.tasks.cvae.build import ensemble_members
from jaxguard.tasks.cvae.splits import extreme_threshold, factor_of, raw_splits

# Pixels wetter than this (mm/day) are "wet" for the `wet_*` ensemble figures: rain is mostly
# exact zeros, where every member and the truth tie and the rank histogram says little.
WET_THRESHOLD = 0.1


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
      crps, spread_skill, rank_histogram, rank_low, rank_high, brier, brier_skill, ...: the
        `EnsembleMetrics` keys of the `members` over every pixel (Brier scores for exceeding
        the extreme threshold, skill against the training base rate), when there are members.
      wet_spread_skill, wet_rank_low, wet_rank_high, wet_crps: the same over wet pixels
        (truth > `WET_THRESHOLD` mm/day).
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
    ensemble: EnsembleMetrics | None  # Of the `members`; None when the model draws none.
    ensemble_wet: EnsembleMetrics | None  # The same over wet pixels.
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
        members: int = 0,
        climatology: float | None = None,
    ) -> CVAEMetrics:
        """Metrics of no data; `members` >= 2 adds the ensemble figures (0: none), with
        `climatology` the reference exceedance probability of their Brier skill."""
        zero = jnp.zeros((), jnp.float32)
        ensemble = (
            EnsembleMetrics.empty(members, threshold, climatology=climatology) if members else None
        )
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
            ensemble=ensemble,
            ensemble_wet=ensemble,
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
            **self._ensemble_update(outputs, target),
        )

    def _ensemble_update(self, outputs: Mapping[str, jax.Array], target: jax.Array) -> dict:
        if self.ensemble is None:
            return {}
        members = outputs["members"]
        return {
            "ensemble": self.ensemble.update(members, target),
            "ensemble_wet": self.ensemble_wet.update(members, target, where=target > WET_THRESHOLD),
        }

    @classmethod
    def ensemble_only(cls, members: int, threshold: float) -> CVAEMetrics:
        """Metrics for scoring drawn ensembles alone (`jaxguard.sample`): `update_ensemble`,
        then `ensemble_figures`; the other statistics stay empty."""
        return cls.empty(
            threshold=threshold,
            d_z=1,
            factor=1,
            lambda_base=0.0,
            lambda_ext=0.0,
            activity_threshold=0.0,
            members=members,
        )

    def update_ensemble(self, members: jax.Array, target: jax.Array) -> CVAEMetrics:
        """Adds `members` `[B, M, H, W]` against `target` `[B, H, W]` to the ensemble figures."""
        return self.replace(**self._ensemble_update({"members": members}, target))

    def ensemble_figures(self) -> dict:
        """The ensemble keys of `compute()` (all pixels, and `wet_*` over wet ones)."""
        state = jax.device_get(self)
        figures = state.ensemble.compute()
        wet = state.ensemble_wet.compute()
        for key in ("crps", "spread_skill", "rank_low", "rank_high"):
            figures[f"wet_{key}"] = wet[key]
        return figures

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
            ensemble=None if self.ensemble is None else self.ensemble.merge(other.ensemble),
            ensemble_wet=(
                None if self.ensemble_wet is None else self.ensemble_wet.merge(other.ensemble_wet)
            ),
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
        if state.ensemble is not None:
            ensemble = state.ensemble_figures()
            ensemble["ensemble_count"] = ensemble.pop("count")
            ensemble["ensemble_nonfinite"] = ensemble.pop("nonfinite")
            result.update(ensemble)
        return result


def empty_metrics(config: ConfigDict) -> CVAEMetrics:
    """Empty metrics of a split; `active_units` uses guard.active_units.activity_threshold, the
    ensemble figures `ensemble_members(config)` members and the training base rate of extreme
    pixels as the climatology of the Brier skill."""
    threshold = extreme_threshold(config)
    base_rate = float(np.mean(raw_splits(config)["train"]["x"] > threshold))
    return CVAEMetrics.empty(
        threshold=threshold,
        members=ensemble_members(config),
        climatology=base_rate if 0.0 < base_rate < 1.0 else None,
        d_z=config.model.d_z,
        factor=factor_of(config),
        lambda_base=config.loss.lambda_base,
        lambda_ext=config.loss.lambda_ext,
        activity_threshold=config.guard.active_units.activity_threshold,
    )


def update_metrics(metrics: CVAEMetrics, outputs, batch) -> CVAEMetrics:
    """Adds a batch of eval-mode `forward` outputs with its truth `x` and `coarse_target`."""
    return metrics.update(outputs, batch["x"], batch["coarse_target"])
