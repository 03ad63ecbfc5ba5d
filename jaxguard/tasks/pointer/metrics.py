"""The pointer task's streaming metrics: `PointingMetrics`, the done head's best guess and the
share of near misses inside the spatial loss's quadratic zone."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ml_collections import ConfigDict

from jaxguard.metrics import PointingMetrics
from jaxguard.tasks.pointer.loss import distance_threshold
from jaxguard.tasks.pointer.splits import image_size


@struct.dataclass
class PointerMetrics:
    """`PointingMetrics` plus the highest done probability given to a done example and the
    share of soft misses.

    `compute()` adds to the `PointingMetrics` keys:
      done_prob_max_positive: the highest done probability of a done example (NaN when no
        example was done); at or below 0.5, done was never predicted where it was true.
      soft_miss_rate: the share of pointing steps whose pixel error `e` lies in the soft zone
        ``miss_px <= e < threshold_px``: the prediction misses the object, yet the spatial
        loss still treats it as "close" (its quadratic zone, where the gradient shrinks with
        the error; seed 004: "the model treats a 20 px error as close enough"). Read from
        the half-pixel error histogram (bins counted by their centre), so accurate to 0.5 px
        at either edge; the zone is a Euclidean disc, which for `loss.norm="l1"` (a diamond
        of the same radius) counts a few errors near the diagonals that the L1 loss already
        treats as far. 0 when ``threshold_px <= miss_px``; NaN with no pointing step.
    """

    pointing: PointingMetrics
    max_done_prob_positive: jax.Array
    soft_zone_px: tuple[float, float] = struct.field(pytree_node=False, default=(0.0, 0.0))

    @classmethod
    def empty(
        cls, image_size: tuple[int, int], soft_zone_px: tuple[float, float] = (0.0, 0.0)
    ) -> PointerMetrics:
        """No examples yet, for images of `(height, width)` pixels; `soft_zone_px` is
        `(miss_px, threshold_px)` (see the class docstring)."""
        # Half-pixel bins over [0, diagonal]: error quantiles accurate to 0.5 px at any size.
        bins = math.ceil(2 * math.hypot(*image_size))
        return cls(
            pointing=PointingMetrics.empty(image_size, bins=bins),
            max_done_prob_positive=jnp.full((), -jnp.inf, jnp.float32),
            soft_zone_px=(float(soft_zone_px[0]), float(soft_zone_px[1])),
        )

    def update(self, pred_xy, target_xy, done_prob, done_true) -> PointerMetrics:
        positive = (done_true >= 0.5) & jnp.isfinite(done_prob)
        # -inf stands in for "no done example yet" and loses every max.
        batch_max = jnp.max(jnp.where(positive, done_prob, -jnp.inf))
        return self.replace(
            pointing=self.pointing.update(pred_xy, target_xy, done_prob, done_true),
            max_done_prob_positive=jnp.maximum(self.max_done_prob_positive, batch_max),
        )

    def compute(self) -> dict[str, float]:
        highest = float(jax.device_get(self.max_done_prob_positive))
        return {
            **self.pointing.compute(),
            "done_prob_max_positive": highest if math.isfinite(highest) else math.nan,
            "soft_miss_rate": self.soft_miss_rate(),
        }

    def soft_miss_rate(self) -> float:
        """Host-side share of pointing errors in ``[miss_px, threshold_px)`` (class docstring)."""
        errors = jax.device_get(self.pointing.pixel_errors)
        counts = np.asarray(errors.counts)
        total = counts.sum() + int(errors.underflow) + int(errors.overflow)
        if total == 0:
            return math.nan
        edges = errors.edges()
        centres = (edges[:-1] + edges[1:]) / 2
        low, high = self.soft_zone_px
        inside = (centres >= low) & (centres < high)
        return float(counts[inside].sum() / total)


def soft_zone_px(config: ConfigDict) -> tuple[float, float]:
    """`(miss_px, threshold_px)`: `guard.lenient_threshold.miss_px` (None: two embedded object
    radii, `2 * data.object_radius`) and `loss.threshold` in pixels."""
    miss_px = config.guard.lenient_threshold.miss_px
    if miss_px is None:
        miss_px = 2 * config.data.object_radius
    return float(miss_px), distance_threshold(config)[1]


def empty_metrics(config: ConfigDict) -> PointerMetrics:
    return PointerMetrics.empty(image_size(config), soft_zone_px(config))


def update_metrics(metrics: PointerMetrics, outputs, batch) -> PointerMetrics:
    return metrics.update(outputs["xy"], batch["target_xy"], outputs["done_prob"], batch["done"])
