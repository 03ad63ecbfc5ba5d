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

from jaxguard import _checks
from jaxguard.tasks.cvae.augment import Augmentation

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
      noise_channels: N(0, 1) noise maps that join the decoder on the coarse and on the fine
        grid, drawn afresh for each ensemble member (zeros for the most likely field). 0: the
        members differ only through z (`:mean_only`, which collapses).
      dry_threshold: mm/day; decoded values below it are exactly 0 (a dry pixel), with the
        gradient of the uncut field. 0: off (softplus never reaches 0).
      train_members: members drawn from the prior in each train step (`members` output, for a
        CRPS term); 0: none.
      eval_members: members drawn from the prior in eval mode (for the ensemble metrics and
        guard), from a fixed key so evaluations repeat; 0: none.
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
        noise_channels: int = 0,
        dry_threshold: float = 0.0,
        train_members: int = 0,
        eval_members: int = 0,
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
        self.noise_channels = noise_channels
        self.dry_threshold = dry_threshold
        self.train_members = train_members
        self.eval_members = eval_members
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
        self.decoder_coarse = conv(base_filters + wide + noise_channels, wide)
        self.decoder_project = conv(wide, base_filters, k=1)
        self.decoder_dropout = nnx.Dropout(decoder_dropout, rngs=rngs)
        self.decoder_fine = conv(base_filters + noise_channels, base_filters)
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

    def decoder_noise(
        self, keys: jax.Array | None, batch: int, grid: tuple[int, int]
    ) -> list[jax.Array]:
        """`[noise [B, *grid, noise_channels]]`: N(0, 1) from one key per row, or zeros without
        keys; `[]` when the decoder takes no noise."""
        if not self.noise_channels:
            return []
        shape = (*grid, self.noise_channels)
        if keys is None:
            return [jnp.zeros((batch, *shape))]
        return [jax.vmap(lambda key: jax.random.normal(key, shape))(keys)]

    def decode(
        self,
        z: jax.Array,
        condition_map: jax.Array,
        condition_vector: jax.Array,
        noise_keys: jax.Array | None = None,
    ) -> jax.Array:
        """Non-negative fine fields `[B, H, W]` (mm/day) from latents `z` `[B, d_z]`.

        `noise_keys` `[B]` (one PRNG key per row) draw the decoder's noise maps; None uses
        zeros (the most likely field given z).
        """
        batch = z.shape[0]
        coarse_h, coarse_w, _ = self.coarse_shape
        h = nnx.gelu(self.decoder_in(jnp.concatenate([z, condition_vector], axis=-1)))
        h = h.reshape(batch, coarse_h, coarse_w, -1)
        noise = self.decoder_noise(noise_keys, batch, (coarse_h, coarse_w))
        h = nnx.gelu(self.decoder_coarse(jnp.concatenate([h, condition_map, *noise], axis=-1)))
        # Project before upsampling: the fine-grid convolutions dominate the cost.
        h = self.decoder_dropout(self.decoder_project(h))
        h = jax.image.resize(h, (batch, *self.fine_shape, h.shape[-1]), method="bilinear")
        h = jnp.concatenate([h, *self.decoder_noise(noise_keys, batch, self.fine_shape)], -1)
        h = self.head(nnx.gelu(self.decoder_fine(h)))[..., 0]
        field = self.output_scale[...] * nnx.softplus(h)
        if self.dry_threshold > 0:
            # Exact zeros where the truth is often exactly 0 (softplus never is); straight-
            # through, so the gradient is that of the field without the cut.
            dry = jnp.where(field < self.dry_threshold, field, 0.0)
            field = field - jax.lax.stop_gradient(dry)
        return field

    def prior_members(
        self,
        prior_mean: jax.Array,
        prior_logvar: jax.Array,
        condition_map: jax.Array,
        condition_vector: jax.Array,
        members: int,
        key: jax.Array,
    ) -> jax.Array:
        """`members` fields per sample `[B, members, H, W]`: z and decoder noise from `key`."""
        batch = prior_mean.shape[0]
        latent_key, noise_key = jax.random.split(key)
        eps = jax.random.normal(latent_key, (batch, members, self.d_z), prior_mean.dtype)
        z = prior_mean[:, None] + jnp.exp(0.5 * prior_logvar)[:, None] * eps
        tile = lambda a: jnp.repeat(a, members, axis=0)
        fields = self.decode(
            z.reshape(batch * members, self.d_z),
            tile(condition_map),
            tile(condition_vector),
            jax.random.split(noise_key, batch * members),
        )
        return fields.reshape(batch, members, *self.fine_shape)

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
          `prior_logvar`, each `[B, d_z]`; with `train_members` (train mode) or
          `eval_members` (eval mode), `members` `[B, M, H, W]` drawn from the prior.
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
        outputs = {
            "pred": self.decode(z, condition_map, condition_vector),
            "generated": self.decode(
                prior_z, condition_map, condition_vector, member_noise_keys(latent_noise)
            ),
            "mean": mean,
            "logvar": logvar,
            "prior_mean": prior_mean,
            "prior_logvar": prior_logvar,
        }
        members = self.eval_members if self.deterministic else self.train_members
        if members:
            # Why a fixed key in eval mode: the same members at every evaluation, so a change
            # of the ensemble figures is the model's, not the draw's.
            key = jax.random.key(0) if self.deterministic else self.latent_rngs()
            outputs["members"] = self.prior_members(
                prior_mean, prior_logvar, condition_map, condition_vector, members, key
            )
        return outputs

    def generate(self, y: jax.Array, latent_noise: jax.Array | None = None) -> jax.Array:
        """Downscaled fields `[B, H, W]` for raw predictors `y` alone.

        Args:
          y: `[B, h, w, C]` raw predictors.
          latent_noise: `[B, d_z]` standard-normal noise, one ensemble member per row;
            None decodes the prior mean.
        """
        condition_map, condition_vector = self.condition(y)
        prior_z = _prior_latent(*self.prior_params(condition_vector), latent_noise)
        return self.decode(
            prior_z, condition_map, condition_vector, member_noise_keys(latent_noise)
        )


def member_noise_keys(latent_noise: jax.Array | None) -> jax.Array | None:
    """One PRNG key per row of `latent_noise` `[B, d_z]`, a function of that row alone.

    The decoder noise of an ensemble member then follows from its latent draw: the same
    `latent_noise` row gives the same member in any batch (the sample panel, `jaxguard.sample`).
    None (the most likely field) gives None: zero decoder noise.
    """
    if latent_noise is None:
        return None
    bits = jax.lax.bitcast_convert_type(latent_noise.astype(jnp.float32), jnp.uint32)
    # A multiplicative hash of the row's bits (uint32 arithmetic wraps).
    odd = jnp.uint32(2654435761) ** jnp.arange(1, bits.shape[-1] + 1, dtype=jnp.uint32)
    seeds = jnp.sum(bits * (odd | jnp.uint32(1)), axis=-1, dtype=jnp.uint32)
    return jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(0), seed))(seeds)


def _prior_latent(
    prior_mean: jax.Array, prior_logvar: jax.Array, latent_noise: jax.Array | None
) -> jax.Array:
    """`prior_mean + sigma * latent_noise`, or the prior mean when no noise is given."""
    if latent_noise is None:
        return prior_mean
    _checks.check_same_shape(_NAME, latent_noise=latent_noise, prior_mean=prior_mean)
    return prior_mean + jnp.exp(0.5 * prior_logvar) * latent_noise
