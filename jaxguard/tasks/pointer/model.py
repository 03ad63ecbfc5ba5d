"""Flax NNX model of the pointer task: conv encoder, spatial attention, x / y / done heads.

`PointerNet(image, objects, num_marked)` returns raw outputs (the loss lives
outside the model). Only the first `num_marked` entries of `objects` are read:
the model never sees the unmarked objects' positions.

  1. Input at the working resolution `work_size` x `work_size` (the image is
     area-resized to it: 8x smaller for the default 384 px images; predictions stay
     normalised and the metrics are in original pixels), five channels: the grey
     image; the marking channel, a Gaussian dot (std `mark_sigma` cells) on each
     marked object; the distance from each cell to the tour's current point (the
     last marked object, or the top-left corner when none is marked), in normalised
     units; and each cell's normalised x and y.
  2. Encoder `model.encoder`: a 3x3 convolution to `features` channels, then one
     residual 3x3 convolution per entry of `dilations` (GELU throughout).
  3. Pointer attention `model.attention`: a per-cell MLP (two 1x1 convolutions) over
     the encoder features and the input channels gives one score per cell; times
     `attention_scale` and through a softmax over the cells, the attention map. Its
     expected cell centre is the coarse `(x, y)` and the attention-weighted features
     are the "attended" feature. The last layer starts at zero (uniform attention);
     `attention_scale` lets the scores grow fast enough to pick one object.
  4. Heads, each a top-level module, so the harness logs `grad_norm/x_head`, ...:
     `x_head` and `y_head` map the attended feature to a sub-cell offset (in cells)
     added to the coarse position. `done_head` maps the spatial maximum of
     `model.detector`, a 1x1 convolution over the image and marking channels only,
     to the done logit: "done" means no object is left without a mark, evidence that
     is local to each cell. With `done_input="encoder"` (the seed's design, kept for the
     zoo's overfitting variant) it maps the spatial maximum of the shared encoder's
     features instead, and memorises the few done training examples.

Outputs: `xy` `[batch, 2]` normalised `(x, y)`, `done_logit` `[batch]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import _checks

_NAME = "PointerNet"
_INPUT_CHANNELS = 5  # Image, marked dots, distance to the tour's current point, x grid, y grid.
_EVIDENCE_CHANNELS = 2  # The done detector sees the image and the marks only.
HEADS = ("x_head", "y_head", "done_head")  # The output layers, each a top-level module.
DONE_INPUTS = ("detector", "encoder")  # What the done head reads (see `PointerNet`).


def cell_centres(size: int) -> jax.Array:
    """`[size]` normalised centres `(i + 0.5) / size` of the working-resolution cells."""
    return (jnp.arange(size, dtype=jnp.float32) + 0.5) / size


class PointerNet(nnx.Module):
    """Image and marked objects -> next object's position and the done logit.

    Args:
      work_size: side of the working resolution in cells (the image is resized to it).
      features: channels of the encoder and width of the attended feature.
      dilations: one residual 3x3 convolution per entry, with that dilation.
      mark_sigma: standard deviation of the marking dots, in cells, `> 0`.
      attention_scale: multiplier of the attention logits, `> 0`: lets a small learning
        rate still sharpen the attention onto one object.
      head_init_std: std of the normal init of the x, y and done head kernels, `>= 0`.
      done_input: what the done head reads: "detector" (the image and marks through a 1x1
        convolution) or "encoder" (the shared encoder's features; see the module docstring).
      rngs: the `params` stream.
    """

    def __init__(
        self,
        *,
        work_size: int,
        features: int,
        dilations: Sequence[int],
        mark_sigma: float,
        attention_scale: float,
        head_init_std: float,
        done_input: str = "detector",
        rngs: nnx.Rngs,
    ):
        for name, value in (
            ("work_size", work_size),
            ("features", features),
            ("mark_sigma", mark_sigma),
            ("attention_scale", attention_scale),
        ):
            _checks.check_positive(_NAME, name, value)
        _checks.check_positive(_NAME, "head_init_std", head_init_std, allow_zero=True)
        for dilation in dilations:
            _checks.check_positive(_NAME, "dilations", dilation)
        if done_input not in DONE_INPUTS:
            raise ValueError(
                f"{_NAME}: `done_input` must be one of {DONE_INPUTS}, got {done_input!r}"
            )
        self.work_size = work_size
        self.mark_sigma = mark_sigma
        self.attention_scale = attention_scale
        self.encoder = nnx.List(
            [nnx.Conv(_INPUT_CHANNELS, features, kernel_size=(3, 3), rngs=rngs)]
            + [
                nnx.Conv(features, features, kernel_size=(3, 3), kernel_dilation=d, rngs=rngs)
                for d in dilations
            ]
        )
        self.attention = nnx.List(
            [
                nnx.Conv(features + _INPUT_CHANNELS, features, kernel_size=(1, 1), rngs=rngs),
                nnx.Conv(
                    features,
                    1,
                    kernel_size=(1, 1),
                    kernel_init=nnx.initializers.zeros_init(),
                    rngs=rngs,
                ),
            ]
        )
        head_init = nnx.initializers.normal(stddev=head_init_std)
        self.x_head = nnx.Linear(features, 1, kernel_init=head_init, rngs=rngs)
        self.y_head = nnx.Linear(features, 1, kernel_init=head_init, rngs=rngs)
        self.detector = (
            nnx.Conv(_EVIDENCE_CHANNELS, features, kernel_size=(1, 1), rngs=rngs)
            if done_input == "detector"
            else None
        )
        self.done_head = nnx.Linear(features, 1, kernel_init=head_init, rngs=rngs)

    def inputs(self, image: jax.Array, objects: jax.Array, num_marked: jax.Array) -> jax.Array:
        """The `[batch, work_size, work_size, 5]` input channels (see the module docstring).

        Args:
          image: `[batch, H, W, 1]` uint8 or float in [0, 255].
          objects: `[batch, M, 2]` normalised `(x, y)` in visiting order.
          num_marked: `[batch]` int, the number `k` of marked objects.
        """
        fn = f"{_NAME}.inputs"
        _checks.check_rank(fn, "image", image, 4)
        _checks.check_rank(fn, "objects", objects, 3)
        _checks.check_last_dim(fn, "objects", objects, 2)
        _checks.check_rank(fn, "num_marked", num_marked, 1)
        batch, size = image.shape[0], self.work_size
        grey = jax.image.resize(
            image.astype(jnp.float32) / 255.0, (batch, size, size, 1), method="linear"
        )
        centres = cell_centres(size)
        # Squared distances in cells from every cell to every object: [batch, M, size, size].
        dy = (centres[None, None, :, None] - objects[:, :, 1, None, None]) * size
        dx = (centres[None, None, None, :] - objects[:, :, 0, None, None]) * size
        dots = jnp.exp(-(dx**2 + dy**2) / (2.0 * self.mark_sigma**2))
        index = jnp.arange(objects.shape[1])[None, :]
        marked = (index < num_marked[:, None]).astype(jnp.float32)
        marks = jnp.einsum("bm,bmhw->bhw", marked, dots)
        # The tour's current point: the last marked object, or the top-left corner (0, 0).
        last = jnp.take_along_axis(objects, jnp.maximum(num_marked - 1, 0)[:, None, None], 1)
        last = jnp.where(num_marked[:, None] > 0, last[:, 0], 0.0)
        grid_y, grid_x = jnp.meshgrid(centres, centres, indexing="ij")
        reach = jnp.hypot(
            grid_x[None] - last[:, 0, None, None], grid_y[None] - last[:, 1, None, None]
        )
        grids = jnp.broadcast_to(jnp.stack([grid_x, grid_y], -1), (batch, size, size, 2))
        return jnp.concatenate([grey, marks[..., None], reach[..., None], grids], axis=-1)

    def __call__(
        self, image: jax.Array, objects: jax.Array, num_marked: jax.Array
    ) -> dict[str, jax.Array]:
        x = self.inputs(image, objects, num_marked)
        stem, *blocks = self.encoder
        features = nnx.gelu(stem(x))
        for conv in blocks:
            features = features + nnx.gelu(conv(features))
        batch, size = features.shape[0], self.work_size
        hidden, out = self.attention
        scores = out(nnx.gelu(hidden(jnp.concatenate([features, x], axis=-1))))
        logits = self.attention_scale * scores.reshape(batch, size * size)
        weights = jax.nn.softmax(logits, axis=-1).reshape(batch, size, size)
        centres = cell_centres(size)
        coarse_x = jnp.einsum("bhw,w->b", weights, centres)
        coarse_y = jnp.einsum("bhw,h->b", weights, centres)
        attended = jnp.einsum("bhw,bhwc->bc", weights, features)
        pred_x = coarse_x + self.x_head(attended)[:, 0] / size
        pred_y = coarse_y + self.y_head(attended)[:, 0] / size
        if self.detector is None:  # done_input="encoder"
            evidence = features
        else:
            evidence = nnx.gelu(self.detector(x[..., :_EVIDENCE_CHANNELS]))
        pooled = jnp.max(evidence, axis=(1, 2))
        return {
            "xy": jnp.stack([pred_x, pred_y], axis=-1),
            "done_logit": self.done_head(pooled)[:, 0],
        }


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> PointerNet:
    del splits  # The architecture does not depend on the data.
    m = config.model
    return PointerNet(
        work_size=m.work_size,
        features=m.features,
        dilations=tuple(m.dilations),
        mark_sigma=m.mark_sigma,
        attention_scale=m.attention_scale,
        head_init_std=m.head_init_std,
        done_input=m.done_input,
        rngs=rngs,
    )


def forward(model: PointerNet, batch) -> dict[str, jax.Array]:
    """The model's outputs plus `done_prob`, the sigmoid of the done logit."""
    outputs = model(batch["image"], batch["objects"], batch["num_marked"])
    return {**outputs, "done_prob": jax.nn.sigmoid(outputs["done_logit"])}


def head(model: PointerNet) -> nnx.Module:
    return model.done_head
