"""The pointer task's streaming metrics: `PointingMetrics` plus the done head's best guess."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct
from ml_collections import ConfigDict

from jaxguard.metrics import PointingMetrics
from jaxguard.tasks.pointer.splits import image_size


@struct.dataclass
class PointerMetrics:
    """`PointingMetrics` plus the highest done probability given to a done example.

    `compute()` adds `done_prob_max_positive` (NaN when no example was done) to the
    `PointingMetrics` keys: at or below 0.5, done was never predicted where it was true.
    """

    pointing: PointingMetrics
    max_done_prob_positive: jax.Array

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> PointerMetrics:
        # Half-pixel bins over [0, diagonal]: error quantiles accurate to 0.5 px at any size.
        bins = math.ceil(2 * math.hypot(*image_size))
        return cls(
            pointing=PointingMetrics.empty(image_size, bins=bins),
            max_done_prob_positive=jnp.full((), -jnp.inf, jnp.float32),
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
        }


def empty_metrics(config: ConfigDict) -> PointerMetrics:
    return PointerMetrics.empty(image_size(config))


def update_metrics(metrics: PointerMetrics, outputs, batch) -> PointerMetrics:
    return metrics.update(outputs["xy"], batch["target_xy"], outputs["done_prob"], batch["done"])
