"""The cVAE task's loss: seed 002's four terms and the ensemble's proper score.

    lambda_base * MAE + lambda_crps * CRPS + lambda_ext * extreme MAE + beta(step) * KL
      + lambda_mass * mass

The CRPS term is the fair ensemble CRPS (`jaxguard.losses.crps_ensemble`, mean over pixels) of
`loss.crps_members` fields drawn from the prior (z and the decoder's noise maps) in each step,
against the truth: a proper score, so it rewards members that spread as widely as the truth
is uncertain, where the MAE of a single decoded field pulls every member onto the median
(the ensemble collapse of the `:mean_only` variant, which has no CRPS term).

with the extreme MAE averaged per sample over the samples that hold extreme pixels
(`jaxguard.losses.extreme_mae`, no batch-ratio scaling), `beta` warmed up linearly by an
optax schedule over `loss.beta_warmup_epochs`, and the mass term comparing the block means
of the reconstruction with those of the truth. `loss.extreme_ratio_scaling` (the
`:ratio_bug` variant) swaps the extreme term for `seed002_ratio_scaled_extreme_mae`, the
seed's bug.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.tasks.cvae.splits import extreme_threshold

# The outputs of `model.forward` the loss terms read.
LOSS_INPUTS = ("pred", "target", "mean", "logvar", "prior_mean", "prior_logvar", "coarse_target")


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
    """The extreme term's name in the composite (and in the logs): the bug gets its own."""
    return "extreme_ratio_bug" if config.loss.extreme_ratio_scaling else "extreme"


def beta_warmup_steps(config: ConfigDict, steps_per_epoch: int) -> int:
    """Train steps over which the KL weight rises from 0 to `loss.beta`."""
    return int(round(config.loss.beta_warmup_epochs * steps_per_epoch))


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    """The composite of `config.loss`: mae, crps (when lambda_crps > 0), extreme (or
    extreme_ratio_bug), kl and mass."""
    cfg = config.loss
    threshold = extreme_threshold(config)
    factor = splits["train"]["x"].shape[1] // splits["train"]["y"].shape[1]
    extreme_fn = (
        seed002_ratio_scaled_extreme_mae if cfg.extreme_ratio_scaling else losses.extreme_mae
    )
    ensemble = {}
    if cfg.lambda_crps > 0:
        ensemble["crps"] = losses.Term(
            losses.crps_ensemble, inputs=("members", "target"), weight=cfg.lambda_crps
        )
    return losses.compose(
        mae=losses.Term(losses.absolute_error, weight=cfg.lambda_base),
        **ensemble,
        **{
            extreme_term_name(config): losses.Term(
                functools.partial(extreme_fn, threshold=threshold),
                weight=cfg.lambda_ext,
                # The plain extreme MAE: the guard.loss_terms check of the term's effective weight.
                reference=functools.partial(losses.extreme_mae, threshold=threshold),
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


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    """The arrays the loss terms read, all from `outputs`."""
    del batch  # The target may have been augmented: forward returns the one the model saw.
    inputs = {key: outputs[key] for key in LOSS_INPUTS}
    if "members" in outputs:
        inputs["members"] = outputs["members"]
    return inputs
