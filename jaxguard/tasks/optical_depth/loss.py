"""The optical-depth loss: a base error plus seed 000's collapse remedies, declared as terms.

`base_weight * base(pred, target) [per-example weights] + variance_weight * variance penalty
+ r2_weight * R² penalty + std_gap_weight * std gap - diversity_weight * var(pred)`; a weight of
0 leaves a term out. `loss.base` is `mse` or `mae` (checked by `check_config`).
"""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from jaxguard import losses
from jaxguard.config import ConfigError
from jaxguard.tasks.optical_depth.data import SIGNALS

BASE_LOSSES = {"mse": lambda p, t: (p - t) ** 2, "mae": losses.absolute_error}
# config.loss weight key -> (term name, batch-statistic loss).
REMEDIES = {
    "variance_weight": ("variance", losses.variance_penalty),
    "r2_weight": ("r2_penalty", losses.r2_penalty),
    "std_gap_weight": ("std_gap", losses.std_gap),
}


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    del splits, steps_per_epoch  # No schedules in this task's loss.
    cfg = config.loss
    terms = {
        cfg.base: losses.Term(
            BASE_LOSSES[cfg.base], weight=cfg.base_weight, example_weights="weight"
        )
    }
    for key, (name, fn) in REMEDIES.items():
        if cfg[key] > 0:
            terms[name] = losses.Term(fn, weight=cfg[key])
    if cfg.diversity_weight > 0:
        terms["diversity"] = losses.Term(
            losses.negative_variance, inputs=("pred",), weight=cfg.diversity_weight
        )
    return losses.compose(**terms)


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    return {"pred": outputs["pred"], "target": batch["target"], "weight": batch["weight"]}


def check_config(config: ConfigDict) -> None:
    """The task's keys: one ConfigError naming the first bad one."""
    d, cfg = config.data, config.loss
    if cfg.base not in BASE_LOSSES:
        raise ConfigError(f"loss.base must be one of {', '.join(BASE_LOSSES)}, got {cfg.base!r}")
    for key in ("num_train", "num_val", "num_test", "frames", "image_size"):
        if d[key] < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {d[key]!r}")
    if d.noise < 0:
        raise ConfigError(f"data.noise must be >= 0, got {d.noise!r}")
    if d.signal not in SIGNALS:
        raise ConfigError(f"data.signal must be one of {', '.join(SIGNALS)}, got {d.signal!r}")
    for key in ("base_weight", *REMEDIES, "diversity_weight"):
        if cfg[key] < 0:
            raise ConfigError(f"loss.{key} must be >= 0, got {cfg[key]!r}")
    if cfg.overweight_factor < 1:
        raise ConfigError(
            f"loss.overweight_factor must be >= 1 (1: no overweighting), got "
            f"{cfg.overweight_factor!r}"
        )
    if config.model.pretrain.epochs < 0:
        raise ConfigError(
            f"model.pretrain.epochs must be >= 0, got {config.model.pretrain.epochs!r}"
        )
