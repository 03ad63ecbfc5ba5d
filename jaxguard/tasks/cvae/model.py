"""The cVAE task's model: the Flax NNX conditional VAE and the harness hooks around it.

`make_model` builds it from the config and the training data, `forward` runs a batch through
it (augmentation included), `head` is its output layer.

`DownscalingCVAE` maps coarse predictors `y` `[batch, h, w, C]` (raw units) and,
for training, the fine field `x` `[batch, H, W]` (mm/day) to raw outputs; the
loss lives outside the model.

  Condition encoder: `y` is standardized with the training split's per-channel
    mean and std (stored in the model, so a restored model takes raw predictors),
    passes two 3x3 convolutions on the coarse grid (`2 * base_filters` channels,
    the *condition map*) and a dense layer to the *condition vector* `[batch, d_y]`.
  Posterior q(z | x, y): `log1p(x / scale)` (tames the heavy tail) passes a 3x3
    convolution on the fine grid and a `factor x factor`, stride-`factor`
    convolution down to the coarse grid, is concatenated with the condition map,
    and a 3x3 convolution, a dense layer (`d_y`) and a dense head give `mean` and
    `logvar` `[batch, d_z]`.
  Prior p(z | y): a dense head on the condition vector (`prior="conditional"`), or
    the standard normal (`prior="standard"`).
  Decoder p(x | z, y): `[z, condition vector]` -> dense -> a coarse map with
    `base_filters` channels, concatenated with the condition map, a 3x3
    convolution and a 1x1 projection to `base_filters` channels, bilinear
    upsampling to the fine grid, a 3x3 convolution and a 3x3 convolution to one
    channel;
    `scale * softplus(.)` makes the field non-negative in mm/day.

Dropout (`encoder_dropout`, `decoder_dropout`) follows NNX's mode switch:
`model.train()` enables it and samples `z` from the posterior,
`model.eval()` disables it and uses the posterior mean. The random streams live
in the model (`latent`, `augment`, `dropout`; the first two fall back to the
`default` stream of the `nnx.Rngs` the model is built with), so the harness
checkpoints them.

`model.augment` is the training-time augmentation of a batch (`augment.Augmentation`:
random flips and quarter turns of `x` and `y` together, Gaussian noise on the predictors,
mixup of pairs of samples); it is the identity in eval mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import _checks
from jaxguard.tasks.cvae.augment import Augmentation
from jaxguard.tasks.cvae.splits import raw_splits

_NAME = "DownscalingCVAE"
PRIORS = ("conditional", "standard")
# Largest dropout rate of the encoders and the decoder.
MAX_DROPOUT = 0.999
# log-variances are squashed into (-_LOGVAR_BOUND, _LOGVAR_BOUND) by a scaled tanh.
_LOGVAR_BOUND = 8.0
# Floor of the predictor standard deviations used for standardization.
_STD_FLOOR = 1e-6


class Statistic(nnx.Variable):
    """A constant computed from the training split (not trained, but checkpointed)."""


def _bounded_logvar(raw: jax.Array) -> jax.Array:
    # A smooth bound keeps exp(logvar) finite and its gradient nonzero, unlike a hard clip.
    return _LOGVAR_BOUND * jnp.tanh(raw / _LOGVAR_BOUND)


class DownscalingCVAE(nnx.Module):
    """Conditional VAE `p(x | z, y) q(z | x, y) p(z | y)` for fine fields from coarse predictors.

    Args:
      fine_shape: `(H, W)` of the precipitation field.
      coarse_shape: `(h, w, C)` of the predictors; `H / h = W / w = factor`, a whole number.
      base_filters: channels of the convolutions (the condition map has twice as many).
      d_y: width of the condition vector.
      d_z: latent dimensions.
      encoder_dropout: dropout rate in the condition and posterior encoders, in `[0, 1)`.
      decoder_dropout: dropout rate in the decoder, in `[0, 1)`.
      prior: "conditional" (learned `p(z | y)`) or "standard" (`N(0, I)`).
      predictor_mean: `[C]` training mean of the predictor channels.
      predictor_std: `[C]` training std of the predictor channels.
      output_scale: mm/day scale of the output (e.g. the training std of `x`), `> 0`.
      augmentation: keyword arguments of `Augmentation` other than `predictor_std`, `rngs`.
      rngs: `params`, `dropout`, `latent` and `augment` streams.
    """

    def __init__(
        self,
        *,
        fine_shape: tuple[int, int],
        coarse_shape: tuple[int, int, int],
        base_filters: int,
        d_y: int,
        d_z: int,
        encoder_dropout: float,
        decoder_dropout: float,
        prior: str,
        predictor_mean: jax.Array,
        predictor_std: jax.Array,
        output_scale: float,
        augmentation: dict,
        rngs: nnx.Rngs,
    ):
        height, width = fine_shape
        coarse_h, coarse_w, channels = coarse_shape
        for name, value in (
            ("base_filters", base_filters),
            ("d_y", d_y),
            ("d_z", d_z),
            ("channels", channels),
        ):
            _checks.check_positive(_NAME, name, value)
        if height % coarse_h or width % coarse_w or height // coarse_h != width // coarse_w:
            raise ValueError(
                f"{_NAME}: `fine_shape` {fine_shape} must be the same whole multiple of "
                f"`coarse_shape` {coarse_shape[:2]} along both axes."
            )
        _checks.check_in_range(_NAME, "encoder_dropout", encoder_dropout, 0.0, MAX_DROPOUT)
        _checks.check_in_range(_NAME, "decoder_dropout", decoder_dropout, 0.0, MAX_DROPOUT)
        _checks.check_positive(_NAME, "output_scale", output_scale)
        if prior not in PRIORS:
            raise ValueError(f"{_NAME}: `prior` must be one of {PRIORS}, got {prior!r}.")
        self.fine_shape = (height, width)
        self.coarse_shape = (coarse_h, coarse_w, channels)
        self.factor = height // coarse_h
        self.d_z = d_z
        self.prior = prior
        wide = 2 * base_filters
        coarse_cells = coarse_h * coarse_w

        self.predictor_mean = Statistic(jnp.asarray(predictor_mean, jnp.float32))
        self.predictor_std = Statistic(
            jnp.maximum(jnp.asarray(predictor_std, jnp.float32), _STD_FLOOR)
        )
        self.output_scale = Statistic(jnp.asarray(output_scale, jnp.float32))
        self.augment = Augmentation(predictor_std=self.predictor_std, rngs=rngs, **augmentation)

        conv = lambda cin, cout, k=3, s=1: nnx.Conv(
            cin, cout, kernel_size=(k, k), strides=(s, s), padding="SAME", rngs=rngs
        )
        # Condition encoder.
        self.condition_in = conv(channels, wide)
        self.condition_mid = conv(wide, wide)
        self.condition_vector = nnx.Linear(coarse_cells * wide, d_y, rngs=rngs)
        self.encoder_dropout = nnx.Dropout(encoder_dropout, rngs=rngs)
        # Posterior encoder.
        self.posterior_in = conv(1, base_filters)
        self.posterior_down = conv(base_filters, wide, k=self.factor, s=self.factor)
        self.posterior_mix = conv(2 * wide, wide)
        self.posterior_hidden = nnx.Linear(coarse_cells * wide, d_y, rngs=rngs)
        self.posterior_head = nnx.Linear(d_y, 2 * d_z, rngs=rngs)
        # Conditional prior.
        self.prior_head = nnx.Linear(d_y, 2 * d_z, rngs=rngs) if prior == "conditional" else None
        # Decoder.
        self.decoder_in = nnx.Linear(d_z + d_y, coarse_cells * base_filters, rngs=rngs)
        self.decoder_coarse = conv(base_filters + wide, wide)
        self.decoder_project = conv(wide, base_filters, k=1)
        self.decoder_dropout = nnx.Dropout(decoder_dropout, rngs=rngs)
        self.decoder_fine = conv(base_filters, base_filters)
        self.head = conv(base_filters, 1)
        self.latent_rngs = rngs["latent"].fork()
        self.deterministic = False

    # ------------------------------------------------------------------ pieces

    def condition(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Condition map `[B, h, w, 2F]` and vector `[B, d_y]` of raw predictors `y`."""
        _checks.check_floating(_NAME, y=y)
        if y.ndim != 4 or tuple(y.shape[1:]) != self.coarse_shape:
            raise ValueError(
                f"{_NAME}: `y` must have shape [batch, {', '.join(map(str, self.coarse_shape))}], "
                f"got {y.shape}."
            )
        standard = (y - self.predictor_mean[...]) / self.predictor_std[...]
        features = nnx.gelu(self.condition_mid(nnx.gelu(self.condition_in(standard))))
        vector = nnx.gelu(self.condition_vector(features.reshape(y.shape[0], -1)))
        return features, self.encoder_dropout(vector)

    def posterior(self, x: jax.Array, condition_map: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(mean, logvar)` `[B, d_z]` of q(z | x, y)."""
        _checks.check_floating(_NAME, x=x)
        if x.ndim != 3 or tuple(x.shape[1:]) != self.fine_shape:
            raise ValueError(
                f"{_NAME}: `x` must have shape [batch, {self.fine_shape[0]}, "
                f"{self.fine_shape[1]}], got {x.shape}."
            )
        # log1p of a non-negative field: large rain values stop dominating the encoder input.
        h = jnp.log1p(jnp.maximum(x, 0.0) / self.output_scale[...])[..., None]
        h = nnx.gelu(self.posterior_down(nnx.gelu(self.posterior_in(h))))
        h = nnx.gelu(self.posterior_mix(jnp.concatenate([h, condition_map], axis=-1)))
        h = self.encoder_dropout(nnx.gelu(self.posterior_hidden(h.reshape(x.shape[0], -1))))
        mean, raw_logvar = jnp.split(self.posterior_head(h), 2, axis=-1)
        return mean, _bounded_logvar(raw_logvar)

    def prior_params(self, condition_vector: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(mean, logvar)` `[B, d_z]` of p(z | y); zeros for the standard normal prior."""
        if self.prior_head is None:
            zeros = jnp.zeros((condition_vector.shape[0], self.d_z), condition_vector.dtype)
            return zeros, zeros
        mean, raw_logvar = jnp.split(self.prior_head(condition_vector), 2, axis=-1)
        return mean, _bounded_logvar(raw_logvar)

    def decode(
        self, z: jax.Array, condition_map: jax.Array, condition_vector: jax.Array
    ) -> jax.Array:
        """Non-negative fine fields `[B, H, W]` (mm/day) from latents `z` `[B, d_z]`."""
        batch = z.shape[0]
        coarse_h, coarse_w, _ = self.coarse_shape
        h = nnx.gelu(self.decoder_in(jnp.concatenate([z, condition_vector], axis=-1)))
        h = h.reshape(batch, coarse_h, coarse_w, -1)
        h = nnx.gelu(self.decoder_coarse(jnp.concatenate([h, condition_map], axis=-1)))
        # Project before upsampling: the fine-grid convolutions dominate the cost.
        h = self.decoder_dropout(self.decoder_project(h))
        h = jax.image.resize(h, (batch, *self.fine_shape, h.shape[-1]), method="bilinear")
        h = self.head(nnx.gelu(self.decoder_fine(h)))[..., 0]
        return self.output_scale[...] * nnx.softplus(h)

    # ------------------------------------------------------------------ entry points

    def __call__(
        self, x: jax.Array, y: jax.Array, latent_noise: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Reconstruction and generation for a batch.

        Args:
          x: `[B, H, W]` true fine fields (mm/day), the posterior's input.
          y: `[B, h, w, C]` raw predictors.
          latent_noise: `[B, d_z]` standard-normal noise for `generated`; None uses
            the prior mean (the most likely field).

        Returns:
          `pred` `[B, H, W]` (decoded from a posterior sample in train mode, from the
          posterior mean in eval mode), `generated` `[B, H, W]` (decoded from the prior,
          without looking at `x`), `mean`, `logvar` (posterior) and `prior_mean`,
          `prior_logvar`, each `[B, d_z]`.
        """
        condition_map, condition_vector = self.condition(y)
        mean, logvar = self.posterior(x, condition_map)
        prior_mean, prior_logvar = self.prior_params(condition_vector)
        if self.deterministic:
            z = mean
        else:
            # Reparameterization: z = mean + sigma * eps keeps the sample differentiable.
            eps = jax.random.normal(self.latent_rngs(), mean.shape, mean.dtype)
            z = mean + jnp.exp(0.5 * logvar) * eps
        prior_z = _prior_latent(prior_mean, prior_logvar, latent_noise)
        return {
            "pred": self.decode(z, condition_map, condition_vector),
            "generated": self.decode(prior_z, condition_map, condition_vector),
            "mean": mean,
            "logvar": logvar,
            "prior_mean": prior_mean,
            "prior_logvar": prior_logvar,
        }

    def generate(self, y: jax.Array, latent_noise: jax.Array | None = None) -> jax.Array:
        """Downscaled fields `[B, H, W]` for raw predictors `y` alone.

        Args:
          y: `[B, h, w, C]` raw predictors.
          latent_noise: `[B, d_z]` standard-normal noise, one ensemble member per row;
            None decodes the prior mean.
        """
        condition_map, condition_vector = self.condition(y)
        prior_z = _prior_latent(*self.prior_params(condition_vector), latent_noise)
        return self.decode(prior_z, condition_map, condition_vector)


def _prior_latent(
    prior_mean: jax.Array, prior_logvar: jax.Array, latent_noise: jax.Array | None
) -> jax.Array:
    """`prior_mean + sigma * latent_noise`, or the prior mean when no noise is given."""
    if latent_noise is None:
        return prior_mean
    _checks.check_same_shape(_NAME, latent_noise=latent_noise, prior_mean=prior_mean)
    return prior_mean + jnp.exp(0.5 * prior_logvar) * latent_noise


# ----------------------------------------------------------------------------- harness hooks


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
        augmentation={
            "flips": augment.flips,
            "rotations": augment.rotations,
            "input_noise": augment.input_noise,
            "mixup_alpha": augment.mixup_alpha,
        },
        rngs=rngs,
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


def head(model: DownscalingCVAE) -> nnx.Module:
    """The output convolution, whose weight norm the harness logs."""
    return model.head
