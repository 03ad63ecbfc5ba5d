"""Streaming binary segmentation metrics from exact confusion counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxguard._checks import check_in_range
from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    check_same_config,
    paired_finite_inputs,
    ratio,
)


@struct.dataclass
class SegmentationMetrics:
    """Binary segmentation metrics, micro-averaged over every voxel seen.

    The state is the confusion counts tp/fp/fn/tn summed over all voxels of all batches
    (micro-averaging: one big volume, not a mean of per-image scores). Counts are int32:
    exact up to 2**31 - 1 (about 2.1e9) voxels, where float32 counts silently stop
    incrementing past 2**24 (about 1.7e7 voxels, a handful of 3-D volumes).

    A voxel is predicted foreground when ``probs > threshold`` and is true foreground when
    ``labels >= 0.5`` (labels are {0, 1}; bool, int or float).

    `compute()` keys:
      dice: ``2tp / (2tp + fp + fn)``; iou: ``tp / (tp + fp + fn)``. Both are 1.0 when
        neither prediction nor truth has any foreground (perfect agreement on empty).
      precision: ``tp / (tp + fp)``; NaN when nothing is predicted foreground.
      recall: ``tp / (tp + fn)``; NaN when the truth has no foreground.
      fg_fraction_pred, fg_fraction_true: fraction of voxels predicted / truly foreground.
      count: included voxels; nonfinite: masked-in voxels dropped because the probability or
        label is NaN or Inf. Every value is NaN before any voxel is counted.
    """

    true_positives: jax.Array
    false_positives: jax.Array
    false_negatives: jax.Array
    true_negatives: jax.Array
    nonfinite: jax.Array
    threshold: float = struct.field(pytree_node=False)

    @classmethod
    def empty(cls, threshold: float = 0.5) -> SegmentationMetrics:
        """No voxels yet; `threshold` in [0, 1] binarises the probabilities."""
        check_in_range("SegmentationMetrics.empty", "threshold", threshold, 0.0, 1.0)
        zero = jnp.zeros((), COUNT_DTYPE)
        return cls(
            true_positives=zero,
            false_positives=zero,
            false_negatives=zero,
            true_negatives=zero,
            nonfinite=zero,
            threshold=float(threshold),
        )

    def update(
        self, probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None
    ) -> SegmentationMetrics:
        """Adds a batch. Pure and jittable.

        Args:
          probs: `[batch, ...]` foreground probabilities in [0, 1] (e.g. `[batch, D, H, W]`).
          labels: `{0, 1}` ground truth, same shape as `probs`.
          mask: optional `[batch]` (per volume) or `probs.shape` (per voxel, e.g. a body
            mask); entries > 0 are included.

        Returns:
          The updated state.
        """
        probs, labels, include, nonfinite = paired_finite_inputs(
            "SegmentationMetrics.update", ("probs", "labels"), probs, labels, mask
        )
        predicted = probs > self.threshold
        truth = labels >= 0.5

        def count(condition):
            return jnp.sum(include & condition, dtype=COUNT_DTYPE)

        return self.replace(
            true_positives=self.true_positives + count(predicted & truth),
            false_positives=self.false_positives + count(predicted & ~truth),
            false_negatives=self.false_negatives + count(~predicted & truth),
            true_negatives=self.true_negatives + count(~predicted & ~truth),
            nonfinite=self.nonfinite + nonfinite,
        )

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """The metrics of both voxel sets (thresholds must match)."""
        check_same_config("SegmentationMetrics.merge", self, other, "threshold")
        return jax.tree.map(jnp.add, self, other)

    def compute(self) -> dict[str, float]:
        """Host-side metrics as Python floats (see the class docstring for the keys)."""
        state = jax.device_get(self)
        tp, fp, fn, tn = (
            int(state.true_positives),
            int(state.false_positives),
            int(state.false_negatives),
            int(state.true_negatives),
        )
        count = tp + fp + fn + tn
        # Why: with no foreground on either side prediction and truth agree perfectly; 0/0
        # would otherwise read as NaN (or 0, as some libraries report it).
        empty_agreement = 1.0 if count else float("nan")
        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn) if tp + fp + fn else empty_agreement,
            "iou": ratio(tp, tp + fp + fn) if tp + fp + fn else empty_agreement,
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "fg_fraction_pred": ratio(tp + fp, count),
            "fg_fraction_true": ratio(tp + fn, count),
            "count": float(count),
            "nonfinite": float(state.nonfinite),
        }
