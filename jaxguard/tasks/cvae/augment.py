"""Training-time augmentation of a cVAE batch: flips, quarter turns, predictor noise, mixup.

`Augmentation` is a submodule of `DownscalingCVAE` (`model.augment`): random flips and
quarter turns of `x`, `y` and the coarse mass target together, Gaussian noise on the
predictors, mixup of pairs of samples. It is the identity in eval mode. Its random stream
(`augment`, falling back to `default`) lives in the model, so the harness checkpoints it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxguard import _checks


class Augmentation(nnx.Module):
    """Random, label-consistent augmentation of a training batch; identity in eval mode.

    Args:
      flips: random left-right and up-down flips, each with probability 1/2.
      rotations: a random quarter turn (0, 90, 180 or 270 degrees); needs square grids.
      input_noise: std of Gaussian noise added to the predictors, in units of each
        channel's training std; `>= 0`.
      mixup_alpha: `Beta(alpha, alpha)` mixing of every sample with another of the
        batch (fields, predictors and coarse targets alike, so mass stays conserved);
        0 disables it.
      predictor_std: the model's `Statistic` `[C]` of predictor training stds (an
        `nnx.Variable` shared, not copied: one buffer per array in the model state).
      rngs: the `augment` stream (falls back to `default`).
    """

    def __init__(
        self,
        *,
        flips: bool,
        rotations: bool,
        input_noise: float,
        mixup_alpha: float,
        predictor_std: nnx.Variable,
        rngs: nnx.Rngs,
    ):
        _checks.check_positive("Augmentation", "input_noise", input_noise, allow_zero=True)
        _checks.check_positive("Augmentation", "mixup_alpha", mixup_alpha, allow_zero=True)
        self.flips = flips
        self.rotations = rotations
        self.input_noise = input_noise
        self.mixup_alpha = mixup_alpha
        self.predictor_std = predictor_std
        self.deterministic = False
        self.rngs = rngs["augment"].fork()

    @property
    def active(self) -> bool:
        return bool(self.flips or self.rotations or self.input_noise > 0 or self.mixup_alpha > 0)

    def __call__(
        self, x: jax.Array, y: jax.Array, coarse: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Augments `x` `[B, H, W]`, `y` `[B, h, w, C]` and `coarse` `[B, h, w]` together."""
        if self.deterministic or not self.active:
            return x, y, coarse
        batch = x.shape[0]
        # All three as [B, rows, cols, channels], so one flip or turn applies to each alike.
        fields = (x[..., None], y, coarse[..., None])
        if self.flips:
            for axis in (1, 2):
                flip = jax.random.bernoulli(self.rngs(), 0.5, (batch, 1, 1, 1))
                fields = tuple(jnp.where(flip, jnp.flip(f, axis=axis), f) for f in fields)
        if self.rotations:
            turns = jax.random.randint(self.rngs(), (batch, 1, 1, 1), 0, 4)
            fields = tuple(
                jnp.select(
                    [turns == k for k in range(4)], [jnp.rot90(f, k, axes=(1, 2)) for k in range(4)]
                )
                for f in fields
            )
        if self.input_noise > 0:
            noise = jax.random.normal(self.rngs(), fields[1].shape)
            noisy = fields[1] + self.input_noise * self.predictor_std[...] * noise
            fields = (fields[0], noisy, fields[2])
        if self.mixup_alpha > 0:
            share = jax.random.beta(self.rngs(), self.mixup_alpha, self.mixup_alpha, (batch,))
            share = share[:, None, None, None]
            partner = jax.random.permutation(self.rngs(), batch)
            fields = tuple(share * f + (1.0 - share) * f[partner] for f in fields)
        fine, predictors, coarse_fields = fields
        return fine[..., 0], predictors, coarse_fields[..., 0]
