"""The pointer loss, declared with the composition API, and the seed's spatial loss.

    spatial: distance hinge (continuous, `loss.spatial="hinge"`) or the seed's
             discontinuous version (`"seed_hinge"`), threshold `loss.threshold` in
             `loss.threshold_units`; mean over pointing steps only (final steps
             have no next object)
    done:    `loss.done_weight` x binary cross-entropy with `pos_weight`
             (`loss.pos_weight="auto"`: `(1 - rate) / rate` of the training split)

The keys' choices and ranges are checked by `checks.check_config`; what needs the data (the
training done rate of `pos_weight="auto"`) is checked here.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords
from jaxguard.tasks.pointer.splits import image_size

NORMS = ("l2", "l1")


def seed_discontinuous_hinge(
    pred: jax.Array, target: jax.Array, *, threshold: float, norm: str = "l1"
) -> jax.Array:
    """Seed 004's spatial loss, kept to reproduce its runs (not for new work).

    With `d` the distance between predicted and true point and `tau = threshold`::

        loss = d**2               if d <  tau
               tau * d + tau**2   if d >= tau

    At `d = tau` the value jumps from `tau**2` to `2 tau**2` and the slope drops from
    `2 tau` to `tau`: an error just outside the threshold costs twice one just
    inside and pulls half as hard. `jaxguard.losses.distance_hinge` is the continuous
    form. The seed measured `d` as the L1 distance (`norm="l1"`).

    Args:
      pred: `[batch, 2]` predicted `(x, y)`, normalised.
      target: `[batch, 2]` true `(x, y)`, same units.
      threshold: `tau`, `> 0`, normalised units.
      norm: "l1" (the seed's) or "l2".

    Returns:
      `[batch]` per-example values; the caller reduces.
    """
    squared, distance, far = losses.split_distance(
        "seed_discontinuous_hinge", pred, target, threshold, norm, inclusive=True
    )
    return jnp.where(far, threshold * distance + threshold**2, squared)


SPATIAL_LOSSES = {"hinge": losses.distance_hinge, "seed_hinge": seed_discontinuous_hinge}


def distance_threshold(config: ConfigDict) -> tuple[float, float]:
    """`loss.threshold` as (normalised, pixels)."""
    try:
        return coords.threshold_in_both_units(
            config.loss.threshold, config.loss.threshold_units, image_size(config)
        )
    except ValueError as error:
        raise ConfigError(f"loss.threshold / loss.threshold_units: {error}") from None


def parse_pos_weight(setting: str) -> float | None:
    """`loss.pos_weight` as a number, or None for "auto"; a ConfigError when it is neither."""
    text = setting.strip().lower()
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"loss.pos_weight must be 'auto' or a number > 0, got {setting!r}")
    return value


def done_pos_weight(config: ConfigDict, splits) -> tuple[float, str]:
    """The done term's `pos_weight` and where it came from."""
    value = parse_pos_weight(config.loss.pos_weight)
    if value is not None:
        return value, "set in loss.pos_weight"
    rate = float(np.mean(splits["train"]["done"]))
    if not 0.0 < rate < 1.0:
        raise ConfigError(
            f"loss.pos_weight=auto needs done and not-done training examples; the training "
            f"split's done rate is {rate:.3g} (set data.done_fraction or a number)"
        )
    origin = f"auto: (1 - rate) / rate at train rate {rate:.2%}"
    return losses.pos_weight_from_rate(rate), origin


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    del steps_per_epoch  # No schedules in this task's loss.
    cfg = config.loss
    threshold, _ = distance_threshold(config)
    pos_weight, _ = done_pos_weight(config, splits)
    spatial = functools.partial(SPATIAL_LOSSES[cfg.spatial], threshold=threshold, norm=cfg.norm)
    done = functools.partial(losses.weighted_sigmoid_binary_cross_entropy, pos_weight=pos_weight)
    return losses.compose(
        spatial=losses.Term(spatial, inputs=("pred_xy", "target_xy"), example_weights="pointing"),
        done=losses.Term(done, inputs=("done_logit", "done"), weight=cfg.done_weight),
    )


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    done = batch["done"]
    # Distances in units of the longer image side (the threshold's units), see coords.
    scale = jnp.asarray(coords.distance_scale(batch["image"].shape[1:3]), jnp.float32)
    # Final steps have no next object (NaN target) and weight 0; a finite stand-in keeps
    # 0 * NaN out of the weighted mean.
    target = jnp.where(done[:, None] > 0.5, 0.0, batch["target_xy"])
    return {
        "pred_xy": outputs["xy"] * scale,
        "target_xy": target * scale,
        "done_logit": outputs["done_logit"],
        "done": done,
        "pointing": 1.0 - done,
    }
