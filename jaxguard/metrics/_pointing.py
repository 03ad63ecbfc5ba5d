"""Streaming metrics for next-object pointing with a "done" head."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxguard._checks import (
    check_last_dim,
    check_positive,
    check_rank,
    check_same_shape,
)
from jaxguard.metrics._histogram import Histogram
from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    STATE_DTYPE,
    Moments,
    check_same_config,
    inclusion_mask,
    ratio,
)

#: A "done" probability above this counts as predicting done.
DONE_THRESHOLD = 0.5


@struct.dataclass
class PointingMetrics:
    """Pixel error of the pointed next object and quality of the "done" prediction.

    Each example is either a pointing step (``done_true == 0``: the model should point at
    the next object) or a final step (``done_true == 1``: there is no next object). Pixel
    errors are measured on pointing steps only. Coordinates are normalised, ``x = column /
    width`` and ``y = row / height``, so the pixel error is
    ``hypot(dx * width, dy * height)``.

    An example is dropped (and counted in `nonfinite`) when `done_prob` or `done_true` is
    NaN/Inf, or when it is a pointing step and a coordinate is NaN/Inf; coordinates of final
    steps are ignored, so they may be NaN placeholders.

    `compute()` keys:
      pixel_error_mean: exact mean pixel error (from a running sum).
      pixel_error_median, pixel_error_p90: from a fixed-bin `Histogram` of the errors over
        ``[0, max_error_px]``, linearly interpolated inside the bin, so accurate to one bin
        width (``max_error_px / bins``; see `Histogram.quantile`). Errors above
        `max_error_px` fall in the overflow bin; a quantile that lands there reports
        `max_error_px` (a lower bound).
      pixel_error_count: number of pointing steps measured.
      done_precision, done_recall, done_f1: "done" as the positive class, predicted when
        ``done_prob > 0.5``. Precision is NaN when done was never predicted, recall NaN when
        no example is done, F1 NaN when neither happened.
      done_prob_mean, done_prob_std: mean and population std (ddof=0) of `done_prob`; a std
        near 0 means the done head has collapsed to a constant.
      done_positive_rate: fraction of examples predicted done (``done_prob > 0.5``).
      done_true_rate: fraction of examples that are done.
      count: included examples; nonfinite: masked-in examples dropped as described above.
    """

    pixel_error_sum: jax.Array
    pixel_errors: Histogram
    done_prob_moments: Moments
    done_true_positives: jax.Array
    done_false_positives: jax.Array
    done_false_negatives: jax.Array
    done_true_negatives: jax.Array
    nonfinite: jax.Array
    image_size: tuple[int, int] = struct.field(pytree_node=False)

    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int],
        max_error_px: float | None = None,
        bins: int = 256,
    ) -> PointingMetrics:
        """No examples yet.

        Args:
          image_size: ``(height, width)`` in pixels.
          max_error_px: upper end of the error histogram in pixels; defaults to the image
            diagonal, the largest error between two points inside the image.
          bins: number of histogram bins; quantiles are accurate to ``max_error_px / bins``.
        """
        fn = "PointingMetrics.empty"
        if len(image_size) != 2:
            raise ValueError(f"{fn}: `image_size` must be (height, width), got {image_size}.")
        height, width = image_size
        check_positive(fn, "image_size[0] (height)", height)
        check_positive(fn, "image_size[1] (width)", width)
        if max_error_px is None:
            max_error_px = math.hypot(height, width)
        check_positive(fn, "max_error_px", max_error_px)
        zero = jnp.zeros((), COUNT_DTYPE)
        return cls(
            pixel_error_sum=jnp.zeros((), STATE_DTYPE),
            pixel_errors=Histogram.empty(0.0, max_error_px, bins),
            done_prob_moments=Moments.empty(1),
            done_true_positives=zero,
            done_false_positives=zero,
            done_false_negatives=zero,
            done_true_negatives=zero,
            nonfinite=zero,
            image_size=(int(height), int(width)),
        )

    def update(
        self,
        pred_xy: jax.Array,
        target_xy: jax.Array,
        done_prob: jax.Array,
        done_true: jax.Array,
        mask: jax.Array | None = None,
    ) -> PointingMetrics:
        """Adds a batch. Pure and jittable.

        Args:
          pred_xy: `[batch, 2]` predicted ``(x, y)`` in normalised [0, 1] coordinates.
          target_xy: `[batch, 2]` target ``(x, y)``, same convention.
          done_prob: `[batch]` predicted probability that there is no next object.
          done_true: `[batch]` {0, 1}, 1 when there is no next object.
          mask: optional `[batch]`; entries > 0 are included.

        Returns:
          The updated state.
        """
        fn = "PointingMetrics.update"
        check_rank(fn, "pred_xy", pred_xy, 2)
        check_last_dim(fn, "pred_xy", pred_xy, 2)
        check_same_shape(fn, pred_xy=pred_xy, target_xy=target_xy)
        check_rank(fn, "done_prob", done_prob, 1)
        check_same_shape(fn, done_prob=done_prob, done_true=done_true)
        batch = jnp.shape(pred_xy)[0]
        if jnp.shape(done_prob)[0] != batch:
            raise ValueError(
                f"{fn}: `done_prob` has {jnp.shape(done_prob)[0]} examples but `pred_xy` "
                f"has {batch}; they must be equal."
            )
        included = inclusion_mask(fn, mask, (batch,))
        pred_xy = jnp.asarray(pred_xy, STATE_DTYPE)
        target_xy = jnp.asarray(target_xy, STATE_DTYPE)
        done_prob = jnp.asarray(done_prob, STATE_DTYPE)
        done_true = jnp.asarray(done_true, STATE_DTYPE)

        done = done_true >= 0.5
        coords_finite = jnp.all(jnp.isfinite(pred_xy) & jnp.isfinite(target_xy), axis=1)
        # Why: coordinates of final steps are never used, so only pointing steps need them.
        finite = jnp.isfinite(done_prob) & jnp.isfinite(done_true) & (done | coords_finite)
        include = included & finite
        pointing = include & ~done

        height, width = self.image_size
        # Why: `where` first, so NaN placeholders of final steps cannot reach the sum.
        delta = jnp.where(pointing[:, None], pred_xy - target_xy, 0.0)
        pixel_error = jnp.hypot(delta[:, 0] * width, delta[:, 1] * height)
        predicted = done_prob > DONE_THRESHOLD

        def count(condition):
            return jnp.sum(include & condition, dtype=COUNT_DTYPE)

        return self.replace(
            pixel_error_sum=self.pixel_error_sum + jnp.sum(pixel_error),
            pixel_errors=self.pixel_errors.update(pixel_error, mask=pointing),
            done_prob_moments=self.done_prob_moments.merge(
                Moments.from_batch(done_prob[:, None], include)
            ),
            done_true_positives=self.done_true_positives + count(predicted & done),
            done_false_positives=self.done_false_positives + count(predicted & ~done),
            done_false_negatives=self.done_false_negatives + count(~predicted & done),
            done_true_negatives=self.done_true_negatives + count(~predicted & ~done),
            nonfinite=self.nonfinite + jnp.sum(included & ~finite, dtype=COUNT_DTYPE),
        )

    def merge(self, other: PointingMetrics) -> PointingMetrics:
        """The metrics of both example sets (image sizes and histograms must match)."""
        check_same_config("PointingMetrics.merge", self, other, "image_size")
        return self.replace(
            pixel_error_sum=self.pixel_error_sum + other.pixel_error_sum,
            pixel_errors=self.pixel_errors.merge(other.pixel_errors),
            done_prob_moments=self.done_prob_moments.merge(other.done_prob_moments),
            done_true_positives=self.done_true_positives + other.done_true_positives,
            done_false_positives=self.done_false_positives + other.done_false_positives,
            done_false_negatives=self.done_false_negatives + other.done_false_negatives,
            done_true_negatives=self.done_true_negatives + other.done_true_negatives,
            nonfinite=self.nonfinite + other.nonfinite,
        )

    def compute(self) -> dict[str, float]:
        """Host-side metrics as Python floats (see the class docstring for the keys)."""
        state = jax.device_get(self)
        tp, fp, fn, tn = (
            int(state.done_true_positives),
            int(state.done_false_positives),
            int(state.done_false_negatives),
            int(state.done_true_negatives),
        )
        count = tp + fp + fn + tn
        pointing_count = count - tp - fn
        return {
            "pixel_error_mean": ratio(state.pixel_error_sum, pointing_count),
            "pixel_error_median": state.pixel_errors.quantile(0.5),
            "pixel_error_p90": state.pixel_errors.quantile(0.9),
            "pixel_error_count": float(pointing_count),
            "done_precision": ratio(tp, tp + fp),
            "done_recall": ratio(tp, tp + fn),
            "done_f1": ratio(2 * tp, 2 * tp + fp + fn),
            "done_prob_mean": float(state.done_prob_moments.means()[0]),
            # Why: variances() is NaN when empty and sqrt(NaN) stays NaN.
            "done_prob_std": math.sqrt(state.done_prob_moments.variances()[0]),
            "done_positive_rate": ratio(tp + fp, count),
            "done_true_rate": ratio(tp + fn, count),
            "count": float(count),
            "nonfinite": float(state.nonfinite),
        }
