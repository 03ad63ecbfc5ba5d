"""Flax NNX model of the surface task: a 3D UNet and the training-time patch augmentation.

`SurfaceSegmenter` holds two parts:

  * `unet`, a `UNet3D` mapping volumes `[batch, D, H, W]` to foreground logits of the same
    shape (raw outputs; the loss lives outside the model);
  * `augment`, a `PatchAugment` that, in training mode only, draws a random flip of each
    spatial axis, a random multiple of 90 degrees rotation in the (H, W) plane and an
    intensity jitter for every patch, and applies the same geometric transform to the
    patch's labels and signed distance map. In evaluation mode it returns its input.

Putting the augmentation in the model gives every epoch fresh views of the fixed training
patches (the harness iterates fixed arrays), its random state is the model's `dropout`
RNG stream, which the harness checkpoints, and `model.train()` / `model.eval()` switch it
like dropout. Flips and quarter turns map the voxel grid onto itself, so labels and the
(Euclidean) signed distance maps stay exact; no interpolation is involved.

UNet3D, for `depth = L` and `initial_filters = F`: an encoder of `L` levels, each two
3x3x3 convolutions (+ normalisation + GELU) with `F * 2**level` channels followed by a 2x
max pool; a bottleneck block with `F * 2**L` channels and dropout; a decoder that
upsamples with a 2x2x2 stride-2 transposed convolution, concatenates the encoder's
features of the same level and applies a block; and a 1x1x1 convolution head to one
channel. Patches must have sides divisible by `2**L`.

The task's hooks: `make_model` builds both parts from `config.model` and `config.data`,
`forward` runs them on a batch, `head` is the UNet's output layer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from scipy import special

from jaxguard import _checks
from jaxguard.tasks.surface.splits import foreground_prior

NORMS = ("group", "batch", "none")
_NAME = "UNet3D"
# Arrays that the training-time augmentation transforms together.
_AUGMENTED = ("volume", "labels", "signed_distance")
_LECUN_NORMAL = nnx.initializers.lecun_normal()


def kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """flax's default LeCun-normal for a conv kernel `[*window, in, out]`, drawn as a matrix.

    `fan_in = prod(shape[:-1])` as in flax's default; the draw is a `[fan_in, out]` matrix
    reshaped to `shape`, the same distribution. Why: on XLA CPU a rank-5 random draw takes
    seconds to compile, a rank-2 one a fraction of that, and a UNet has a dozen kernels.
    """
    return _LECUN_NORMAL(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)


_CONV3 = dict(kernel_size=(3, 3, 3), padding="SAME", kernel_init=kernel_init)


def _normalisation(norm: str, features: int, groups: int, rngs: nnx.Rngs) -> nnx.Module | None:
    if norm == "group":
        return nnx.GroupNorm(features, num_groups=min(groups, features), rngs=rngs)
    if norm == "batch":
        return nnx.BatchNorm(features, rngs=rngs)
    return None


def _conv3x3x3_as_2d(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` of a 3x3x3 'SAME' `nnx.Conv`, computed as one 2D convolution.

    The three depth offsets are stacked on the channel axis and the depth axis joins the
    batch: `[N, D, H, W, C] -> [N * D, H, W, 3C]`, convolved with the kernel reshaped to
    `[3, 3, 3C, out]`. The same sums in another order (float32 rounding apart), with the
    same parameters. Why: XLA:CPU's 3D convolutions (forward and both gradients) ran 4-8x
    slower than the same layers in PyTorch (16 -> 8 channels at 8 x 16^3: about 240 ms
    against 31), and this form took the whole surface train step from 876 to 376 ms at load 7
    (`python -m benchmarks.train_step --compare torch`, 2 CPU cores).
    """
    kernel, bias = conv.kernel[...], conv.bias[...]
    n, d, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate([padded[:, offset : offset + d] for offset in range(3)], axis=-1)
    kernel = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, -1)
    y = jax.lax.conv_general_dilated(
        stacked.reshape(n * d, h, w, 3 * c),
        kernel,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(n, d, h, w, -1) + bias


class ConvBlock(nnx.Module):
    """Two 3x3x3 convolutions, each followed by the normalisation and a GELU."""

    def __init__(self, in_features: int, features: int, *, norm: str, groups: int, rngs):
        self.convs = nnx.List(
            [
                nnx.Conv(in_features, features, **_CONV3, rngs=rngs),
                nnx.Conv(features, features, **_CONV3, rngs=rngs),
            ]
        )
        self.norms = nnx.List([_normalisation(norm, features, groups, rngs) for _ in range(2)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = _conv3x3x3_as_2d(conv, x)
            if norm is not None:
                x = norm(x)
            x = nnx.gelu(x)
        return x


class UNet3D(nnx.Module):
    """Volumes `[batch, D, H, W]` -> foreground logits `[batch, D, H, W]`.

    Args:
      initial_filters: channels of the first level `F`; level `l` has `F * 2**l`.
      depth: number of 2x downsamplings `L >= 1`.
      norm: "group" (GroupNorm), "batch" (BatchNorm, running statistics in eval mode)
        or "none".
      norm_groups: groups of GroupNorm (capped at the channel count).
      dropout: dropout rate at the bottleneck, in `[0, 1)`.
      head_bias_init: initial bias of the output logit, e.g. `logit(prior)` so the first
        predictions start at the training foreground fraction.
      rngs: `nnx.Rngs` with the default stream (init) and a `dropout` stream.
    """

    def __init__(
        self,
        *,
        initial_filters: int,
        depth: int,
        norm: str,
        norm_groups: int,
        dropout: float,
        head_bias_init: float,
        rngs: nnx.Rngs,
    ):
        for name, value in (("initial_filters", initial_filters), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{_NAME}: `{name}` must be an int >= 1, got {value!r}.")
        if norm not in NORMS:
            raise ValueError(f"{_NAME}: `norm` must be one of {NORMS}, got {norm!r}.")
        _checks.check_in_range(_NAME, "dropout", dropout, 0.0, 0.99)
        self.depth = depth
        widths = [initial_filters * 2**level for level in range(depth + 1)]
        block = dict(norm=norm, groups=norm_groups, rngs=rngs)
        self.encoder = nnx.List(
            [
                ConvBlock(w_in, w, **block)
                for w_in, w in zip([1, *widths[:-2]], widths[:-1], strict=True)
            ]
        )
        self.bottleneck = ConvBlock(widths[-2], widths[-1], **block)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.upsample = nnx.List(
            [
                nnx.ConvTranspose(
                    widths[level + 1],
                    widths[level],
                    kernel_size=(2, 2, 2),
                    strides=(2, 2, 2),
                    kernel_init=kernel_init,
                    rngs=rngs,
                )
                for level in reversed(range(depth))
            ]
        )
        self.decoder = nnx.List(
            [
                ConvBlock(2 * widths[level], widths[level], **block)
                for level in reversed(range(depth))
            ]
        )
        self.head = nnx.Conv(
            widths[0],
            1,
            kernel_size=(1, 1, 1),
            kernel_init=kernel_init,
            bias_init=nnx.initializers.constant(head_bias_init),
            rngs=rngs,
        )

    def __call__(self, volume: jax.Array) -> jax.Array:
        _checks.check_floating(_NAME, volume=volume)
        _checks.check_rank(_NAME, "volume", volume, 4)
        factor = 2**self.depth
        if any(side % factor for side in volume.shape[1:]):
            raise ValueError(
                f"{_NAME}: the spatial sides of `volume` must be divisible by 2**depth = "
                f"{factor}, got shape {volume.shape}."
            )
        x = volume[..., None]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = nnx.max_pool(x, window_shape=(2, 2, 2), strides=(2, 2, 2))
        x = self.dropout(self.bottleneck(x))
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = block(jnp.concatenate([upsample(x), skip], axis=-1))
        return self.head(x)[..., 0]


def _rotate_quarter_turns(x: jax.Array, turns: jax.Array) -> jax.Array:
    """`x` `[D, H, W]` rotated by `turns` (0-3) quarter turns in the (H, W) plane."""
    return jax.lax.switch(turns, [lambda v, k=k: jnp.rot90(v, k, axes=(1, 2)) for k in range(4)], x)


class PatchAugment(nnx.Module):
    """Random flips, in-plane quarter turns and intensity jitter of patches, training mode only.

    Called with a dict of `[batch, D, H, W]` arrays (`volume` and any of `labels`,
    `signed_distance`); returns a dict with the same keys. Every example gets its own draw;
    the geometric transform is shared by all of an example's arrays, the intensity jitter
    `volume * (1 + scale) + shift` with `scale, shift ~ N(0, intensity_jitter^2)` touches the
    volume only. Quarter turns need square (H, W) patches.

    Args:
      flips: flip each spatial axis with probability 1/2.
      rotations: rotate by 0, 90, 180 or 270 degrees in the (H, W) plane, uniformly.
      intensity_jitter: standard deviation of the jitter's scale and shift, `>= 0`.
      rngs: the stream (e.g. `rngs.dropout`) the draws come from.
    """

    def __init__(
        self, *, flips: bool, rotations: bool, intensity_jitter: float, rngs: nnx.RngStream
    ):
        _checks.check_positive(
            "PatchAugment", "intensity_jitter", intensity_jitter, allow_zero=True
        )
        self.flips = flips
        self.rotations = rotations
        self.intensity_jitter = intensity_jitter
        self.deterministic = False
        self.rngs = rngs.fork()

    def _transform_example(self, arrays: dict, key: jax.Array) -> dict:
        flip_key, turn_key, jitter_key = jax.random.split(key, 3)
        flip = jax.random.bernoulli(flip_key, 0.5, (3,))
        turns = jax.random.randint(turn_key, (), 0, 4)
        scale, shift = self.intensity_jitter * jax.random.normal(jitter_key, (2,))
        out = {}
        for name, x in arrays.items():
            if self.flips:
                for axis in range(3):
                    x = jnp.where(flip[axis], jnp.flip(x, axis), x)
            if self.rotations:
                x = _rotate_quarter_turns(x, turns)
            if name == "volume":
                x = x * (1.0 + scale) + shift
            out[name] = x
        return out

    def __call__(self, arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if self.deterministic:
            return dict(arrays)
        volume = arrays["volume"]
        if self.rotations and volume.shape[2] != volume.shape[3]:
            raise ValueError(
                f"PatchAugment: in-plane rotations need square (H, W) patches, got {volume.shape}."
            )
        keys = jax.random.split(self.rngs(), volume.shape[0])
        return jax.vmap(self._transform_example)(dict(arrays), keys)


class SurfaceSegmenter(nnx.Module):
    """The surface task's model: `augment` (training mode only) and the `unet`.

    `model(volume)` gives the UNet's logits; `model.augment(batch)` the augmented view.
    """

    def __init__(self, *, unet: UNet3D, augment: PatchAugment):
        self.unet = unet
        self.augment = augment

    def __call__(self, volume: jax.Array) -> jax.Array:
        return self.unet(volume)


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> SurfaceSegmenter:
    """The UNet and the augmentation; the head bias starts at the prior's logit by default."""
    m, d = config.model, config.data
    bias = m.head_bias_init
    if bias is None:  # Start at the prior: no steps spent learning the class balance.
        bias = float(special.logit(np.clip(foreground_prior(splits), 1e-3, 1 - 1e-3)))
    unet = UNet3D(
        initial_filters=m.initial_filters,
        depth=m.depth,
        norm=m.norm,
        norm_groups=m.norm_groups,
        dropout=m.dropout,
        head_bias_init=bias,
        rngs=rngs,
    )
    augment = PatchAugment(
        flips=d.augment_flips,
        rotations=d.augment_rotations,
        intensity_jitter=d.intensity_jitter,
        rngs=rngs.dropout,
    )
    return SurfaceSegmenter(unet=unet, augment=augment)


def forward(model: SurfaceSegmenter, batch) -> dict[str, jax.Array]:
    """Logits of the (augmented, in training mode) patches, and the matching labels and maps."""
    view = model.augment({key: batch[key] for key in _AUGMENTED if key in batch})
    outputs = {"logits": model(view["volume"])}
    outputs.update({key: view[key] for key in ("labels", "signed_distance") if key in view})
    return outputs


def head(model: SurfaceSegmenter) -> nnx.Module:
    """The output layer, whose weight norm the harness logs."""
    return model.unet.head
