"""The surface task's loss: the seed's five-term compound loss, declared with `losses.compose`.

Soft dice, focal (alpha from the data, inverse-frequency class weights per voxel), boundary
(on the signed distance maps of `splits.py`), soft clDice and connectivity, each weighed by
`config.loss.<name>_weight`; a weight of 0 leaves the term out (`checks.check_config` makes
sure one weight is > 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.config import ConfigError

# Loss terms; `config.loss.<name>_weight` weighs each (0 leaves it out).
TERM_NAMES = ("dice", "focal", "boundary", "cldice", "connectivity")


def weighted_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | None,
    gamma: float,
    class_weights: jax.Array | None,
) -> jax.Array:
    """`sigmoid_focal_loss` per voxel, times `binary_class_weight_map` when weights are given.

    Returns:
      `[batch, D, H, W]` per-voxel loss; the composite averages it per example.
    """
    loss = losses.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)
    if class_weights is None:
        return loss
    return loss * losses.binary_class_weight_map(labels, class_weights)


def focal_settings(config: ConfigDict, splits) -> tuple[float, np.ndarray | None]:
    """`(alpha, class weights or None)` of the focal term, from the config and the train data."""
    labels = splits["train"]["labels"] >= 0.5
    alpha = config.loss.focal_alpha
    if alpha is None:
        alpha = 1.0 - float(labels.mean())
    if not config.loss.use_class_weights:
        return alpha, None
    counts = np.array([np.sum(~labels), np.sum(labels)], np.float64)
    if counts.min() == 0:
        absent = "foreground" if counts[1] == 0 else "background"
        raise ConfigError(
            f"loss.use_class_weights: the training patches have no {absent} voxels; set it to "
            "False or change the data"
        )
    return alpha, np.asarray(losses.class_weights(counts), np.float32)


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    """The terms with a weight > 0, composed; `(total, {name: value, ...})` per batch."""
    del steps_per_epoch  # The seed's weights are constant.
    cfg = config.loss
    alpha, weights = focal_settings(config, splits)
    focal = functools.partial(
        weighted_focal_loss,
        alpha=alpha,
        gamma=cfg.focal_gamma,
        class_weights=None if weights is None else jnp.asarray(weights),
    )
    # name -> (per-example or per-voxel loss, the loss inputs it takes)
    candidates = {
        "dice": (
            functools.partial(losses.soft_dice_loss, smooth=cfg.dice_smooth),
            ("logits", "labels"),
        ),
        "focal": (focal, ("logits", "labels")),
        "boundary": (losses.boundary_loss, ("logits", "signed_distance")),
        "cldice": (
            functools.partial(
                losses.soft_cldice_loss,
                iterations=cfg.cldice_iterations,
                smooth=cfg.cldice_smooth,
            ),
            ("logits", "labels"),
        ),
        "connectivity": (losses.connectivity_loss, ("logits", "labels")),
    }
    terms = {
        name: losses.Term(candidates[name][0], inputs=candidates[name][1], weight=weight)
        for name in TERM_NAMES
        if (weight := cfg[f"{name}_weight"]) > 0
    }
    return losses.compose(**terms)


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    """Logits and the labels and signed distance maps of the (augmented) view."""
    del batch  # The outputs carry the labels and maps of the view the model saw.
    return {
        "logits": outputs["logits"],
        "labels": outputs["labels"],
        "signed_distance": outputs["signed_distance"],
    }
