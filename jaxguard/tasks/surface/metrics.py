"""The surface task's metrics: voxel confusion counts plus the mean clDice per patch.

`SurfaceMetrics` = the streaming confusion counts of `SegmentationMetrics` (dice, iou,
precision, recall, predicted and true foreground fractions) plus `cldice`, the mean over
patches of the clDice of the thresholded prediction. Connected components only make sense on
whole volumes, so they are counted on the host after sliding-window inference (`export.py`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.metrics import COUNT_DTYPE, STATE_DTYPE, SegmentationMetrics

# Probability above which a voxel is predicted foreground (metrics, tables, exported masks).
THRESHOLD = 0.5


def _safe_ratio(numerator: jax.Array, denominator: jax.Array, empty: float) -> jax.Array:
    """`numerator / denominator`, and `empty` where the denominator is 0."""
    # Double where: the unused branch never divides by zero, so no NaN leaks into gradients.
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, numerator / safe, empty)


def binary_cldice(predicted: jax.Array, truth: jax.Array, *, iterations: int) -> jax.Array:
    """clDice of binary masks (Shit et al. 2021), per example.

    With morphological skeletons `S` (`losses.soft_skeleton` of the binary masks):
    `Tprec = |S(P) & T| / |S(P)|`, `Tsens = |S(T) & P| / |S(T)|` and
    `clDice = 2 Tprec Tsens / (Tprec + Tsens)`. An empty skeleton makes its ratio 1
    (there is nothing to miss); with both ratios 0 the score is 0.

    Args:
      predicted: `[batch, *spatial]` predicted mask in {0, 1}, floating.
      truth: `[batch, *spatial]` true mask in {0, 1}, floating.
      iterations: soft-skeleton erosion steps (a Python int).

    Returns:
      `[batch]` clDice in [0, 1] (1 is best).
    """
    axes = tuple(range(1, predicted.ndim))
    skeleton_pred = losses.soft_skeleton(predicted, iterations=iterations)
    skeleton_true = losses.soft_skeleton(truth, iterations=iterations)
    # An empty skeleton has nothing to miss: its ratio is 1.
    precision = _safe_ratio(
        jnp.sum(skeleton_pred * truth, axis=axes), jnp.sum(skeleton_pred, axis=axes), 1.0
    )
    sensitivity = _safe_ratio(
        jnp.sum(skeleton_true * predicted, axis=axes), jnp.sum(skeleton_true, axis=axes), 1.0
    )
    return _safe_ratio(2.0 * precision * sensitivity, precision + sensitivity, 0.0)


@struct.dataclass
class SurfaceMetrics:
    """`SegmentationMetrics` plus the mean clDice of the thresholded predictions per patch.

    The clDice part is a sum and a count of per-example values, so `merge` is exact and
    the result is the mean over all examples seen, whatever the batching. `compute()`
    returns SegmentationMetrics' keys plus `cldice` (NaN before any example).
    """

    segmentation: SegmentationMetrics
    cldice_sum: jax.Array
    examples: jax.Array
    iterations: int = struct.field(pytree_node=False)

    @classmethod
    def empty(cls, *, iterations: int, threshold: float = THRESHOLD) -> SurfaceMetrics:
        return cls(
            segmentation=SegmentationMetrics.empty(threshold),
            cldice_sum=jnp.zeros((), STATE_DTYPE),
            examples=jnp.zeros((), COUNT_DTYPE),
            iterations=iterations,
        )

    def update(self, probs: jax.Array, labels: jax.Array) -> SurfaceMetrics:
        """Adds a batch of `[batch, D, H, W]` probabilities and {0, 1} labels. Jittable."""
        predicted = (probs > self.segmentation.threshold).astype(STATE_DTYPE)
        truth = (labels >= 0.5).astype(STATE_DTYPE)
        scores = binary_cldice(predicted, truth, iterations=self.iterations)
        return self.replace(
            segmentation=self.segmentation.update(probs, labels),
            cldice_sum=self.cldice_sum + jnp.sum(scores),
            examples=self.examples + scores.shape[0],
        )

    def merge(self, other: SurfaceMetrics) -> SurfaceMetrics:
        if self.iterations != other.iterations:
            raise ValueError(
                f"SurfaceMetrics.merge: iterations differ ({self.iterations} vs "
                f"{other.iterations}); the clDice values are not comparable."
            )
        return self.replace(
            segmentation=self.segmentation.merge(other.segmentation),
            cldice_sum=self.cldice_sum + other.cldice_sum,
            examples=self.examples + other.examples,
        )

    def compute(self) -> dict[str, float]:
        examples = int(jax.device_get(self.examples))
        cldice = float(jax.device_get(self.cldice_sum)) / examples if examples else math.nan
        return {**self.segmentation.compute(), "cldice": cldice}


def all_foreground_dice(labels: np.ndarray) -> float:
    """Dice of predicting every voxel foreground: `2 f / (1 + f)` for foreground fraction f."""
    fraction = float(np.mean(np.asarray(labels) >= 0.5))
    return 2.0 * fraction / (1.0 + fraction)


def empty_metrics(config: ConfigDict) -> SurfaceMetrics:
    """Empty `SurfaceMetrics` with the loss's skeleton depth (`loss.cldice_iterations`)."""
    return SurfaceMetrics.empty(iterations=config.loss.cldice_iterations)


def update_metrics(metrics: SurfaceMetrics, outputs, batch) -> SurfaceMetrics:
    """Adds a batch: probabilities of the logits against the labels of the same view."""
    del batch
    return metrics.update(jax.nn.sigmoid(outputs["logits"]), outputs["labels"])
