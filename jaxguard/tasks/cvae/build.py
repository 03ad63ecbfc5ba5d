"""The cVAE model as the harness builds and calls it: `make_model`, `forward`, `head`."""

from __future__ import annotations

import jax
from flax import nnx
from ml_collections import ConfigDict

from jaxguard.tasks.cvae.model import DownscalingCVAE
from jaxguard.tasks.cvae.splits import raw_splits


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> DownscalingCVAE:
    """The model of `config.model` and `config.data.augment`, scaled by the training samples."""
    m, augment = config.model, config.data.augment
    train = raw_splits(config)["train"]  # Statistics of the samples, before oversampling.
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
        noise_channels=m.noise_channels,
        dry_threshold=m.dry_threshold,
        train_members=config.loss.crps_members if config.loss.lambda_crps > 0 else 0,
        eval_members=ensemble_members(config),
        augmentation={
            "flips": augment.flips,
            "rotations": augment.rotations,
            "input_noise": augment.input_noise,
            "mixup_alpha": augment.mixup_alpha,
        },
        rngs=rngs,
    )


def ensemble_members(config: ConfigDict) -> int:
    """Members drawn per validation and test day: `guard.ensemble_spread.members` when that
    guard is on (the metrics it reads need them), and at least `loss.crps_members` when the
    loss has a CRPS term (the validation loss scores them); else none."""
    spread = config.guard.ensemble_spread
    guard_members = spread.members if spread.enabled else 0
    crps_members = config.loss.crps_members if config.loss.lambda_crps > 0 else 0
    return max(guard_members, crps_members)


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


def head(model: DownscalingCVAE) -> nnx.Module:
    """The output convolution, whose weight norm the harness logs."""
    return model.head
