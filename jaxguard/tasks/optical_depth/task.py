"""The optical-depth task (seeds 000, 001) as the harness sees it.

Frames `[batch, T, H, W, 1]` -> optical depth `[batch]`. The loss is a declared
composite of a base error (MSE or MAE, optionally overweighting high targets)
and the collapse remedies of seed 000, each with its own weight in
`config.loss`; a weight of 0 leaves the term out.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import config as config_lib
from jaxguard import guards as guards_lib
from jaxguard import losses
from jaxguard.metrics import RegressionMetrics
from jaxguard.tasks.optical_depth import data as data_lib
from jaxguard.tasks.optical_depth.model import FrameDecoder, OpticalDepthRegressor

# (label, validation metric key) pairs of the per-epoch console line.
EPOCH_LINE = (("R²", "r2"), ("std ratio", "std_ratio"), ("pred std", "pred_std"))
# Metrics of the fixed validation batch logged every `log.diagnostics_every_steps`.
DIAGNOSTIC_KEYS = ("pred_std", "r2", "std_ratio")

_BASE_LOSSES = {"mse": lambda p, t: (p - t) ** 2, "mae": losses.absolute_error}
# config.loss weight key -> (term name, batch-statistic loss).
_REMEDIES = {
    "variance_weight": ("variance", losses.variance_penalty),
    "r2_weight": ("r2_penalty", losses.r2_penalty),
    "std_gap_weight": ("std_gap", losses.std_gap),
}


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """The embedded data, plus per-example loss weights from `loss.overweight_*`."""
    d = config.data
    splits = data_lib.generate(
        num_train=d.num_train,
        num_val=d.num_val,
        num_test=d.num_test,
        frames=d.frames,
        image_size=d.image_size,
        noise=d.noise,
        seed=config.seed,
    )
    for split in splits.values():
        split["weight"] = np.asarray(
            losses.overweight_high_targets(
                jnp.asarray(split["target"]),
                threshold=config.loss.overweight_threshold,
                overweight_factor=config.loss.overweight_factor,
            )
        )
    return splits


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> OpticalDepthRegressor:
    m = config.model
    bias = m.head_bias_init
    if bias is None:  # Start at the training mean: no epochs spent learning the offset.
        bias = float(np.mean(splits["train"]["target"]))
    return OpticalDepthRegressor(
        frames=config.data.frames,
        features=m.features,
        conv_features=tuple(m.conv_features),
        attention_scales=tuple(m.attention_scales),
        num_heads=m.num_heads,
        dropout=m.dropout,
        head_init_std=m.head_init_std,
        head_bias_init=bias,
        rngs=rngs,
    )


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    del splits, steps_per_epoch  # No schedules in this task's loss.
    cfg = config.loss
    terms = {
        cfg.base: losses.Term(
            _BASE_LOSSES[cfg.base], weight=cfg.base_weight, example_weights="weight"
        )
    }
    for key, (name, fn) in _REMEDIES.items():
        if cfg[key] > 0:
            terms[name] = losses.Term(fn, weight=cfg[key])
    if cfg.diversity_weight > 0:
        terms["diversity"] = losses.Term(
            losses.negative_variance, inputs=("pred",), weight=cfg.diversity_weight
        )
    return losses.compose(**terms)


def startup_lines(config: ConfigDict, splits) -> list[str]:
    if config.loss.base not in _BASE_LOSSES:
        raise config_lib.ConfigError(
            f"loss.base must be one of {sorted(_BASE_LOSSES)}, got {config.loss.base!r}"
        )
    target = splits["train"]["target"]
    return [
        f"train targets: mean {target.mean():.3f}, std {target.std():.3f}, range "
        f"[{target.min():.2f}, {target.max():.2f}]; oracle R² on test "
        f"{data_lib.oracle_r2(splits['test']):.3f}"
    ]


def forward(model: OpticalDepthRegressor, batch) -> dict[str, jax.Array]:
    return {"pred": model(batch["frames"])}


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    return {"pred": outputs["pred"], "target": batch["target"], "weight": batch["weight"]}


def empty_metrics(config: ConfigDict) -> RegressionMetrics:
    del config
    return RegressionMetrics.empty()


def update_metrics(metrics: RegressionMetrics, outputs, batch) -> RegressionMetrics:
    return metrics.update(outputs["pred"], batch["target"])


def head(model: OpticalDepthRegressor) -> nnx.Module:
    return model.head


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    return {"predictions": np.asarray(outputs["pred"]), "targets": np.asarray(batch["target"])}


def collapse_arrays(outputs, batch) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(outputs["pred"]), np.asarray(batch["target"])


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    return {"true": batch["target"], "predicted": outputs["pred"], "oracle": batch["oracle"]}


def report_lines(config: ConfigDict, splits, summary: Mapping) -> list[str]:
    test = summary["test"]
    oracle = data_lib.oracle_r2(splits["test"])
    stopped = summary["stopped_by"]
    return [
        f"optical depth, config {config.task} (seed {config.seed}), workdir {summary['workdir']}",
        f"test split: {len(splits['test']['target'])} sequences of {config.data.frames} frames",
        f"R² {test['r2']:.4f} (oracle {oracle:.4f}, {test['r2'] / oracle:.1%} of it)",
        f"MAE {test['mae']:.4f}  RMSE {test['rmse']:.4f}  MAPE {test['mape']:.1%}",
        f"pred std {test['pred_std']:.4f} vs target std {test['target_std']:.4f} "
        f"(std ratio {test['std_ratio']:.3f}, variance ratio {test['variance_ratio']:.3f})",
        f"pred spread {test['spread']:.4f} vs target spread {test['target_spread']:.4f}",
        f"best epoch {summary['best_epoch']} of {summary['epochs_run']} run, "
        f"{summary['train_seconds']:.0f} s of training",
        "stopped by: " + (stopped["message"] if stopped else "the epoch budget"),
    ]


def pretrain(config: ConfigDict, model: OpticalDepthRegressor, splits, log) -> dict | None:
    """Self-supervised warm start of the frame encoder: reconstruct every frame.

    Seed 000's pretraining reconstructed only the first frame and stopped on a
    monotonic-improvement rule; here every frame is decoded from its own
    features and the stage stops on validation reconstruction error with its
    own patience (`model.pretrain.patience`). Runs only when
    `model.pretrain.epochs > 0`; the decoder is discarded afterwards.

    Returns:
      `{"epochs": ..., "best_epoch": ..., "best_val_mse": ...}`, or None when disabled.
    """
    cfg = config.model.pretrain
    if cfg.epochs <= 0:
        return None
    decoder = FrameDecoder(
        features=config.model.features,
        image_size=config.data.image_size,
        channels=1,
        rngs=nnx.Rngs(config.seed + 7),
    )
    pair = nnx.List([model, decoder])
    optimizer = nnx.Optimizer(pair, optax.adam(cfg.lr), wrt=nnx.Param)

    def reconstruction_error(pair, frames):
        encoder_model, decoder = pair
        return jnp.mean((decoder(encoder_model.encode(frames)) - frames) ** 2)

    @nnx.jit
    def step(pair, optimizer, frames):
        loss, grads = nnx.value_and_grad(reconstruction_error)(pair, frames)
        optimizer.update(pair, grads)
        return loss

    evaluate = nnx.jit(reconstruction_error)
    stopper = guards_lib.EarlyStopping(monitor="mse", mode="min", patience=cfg.patience)
    batch_size = config.train.batch_size
    train, val = splits["train"]["frames"], splits["val"]["frames"]
    for epoch in range(cfg.epochs):
        order = np.random.default_rng(config.seed + 31 * epoch).permutation(len(train))
        for start in range(0, len(train) - batch_size + 1, batch_size):
            step(pair, optimizer, jnp.asarray(train[order[start : start + batch_size]]))
        val_mse = float(
            np.mean(
                [
                    evaluate(pair, jnp.asarray(val[s : s + batch_size]))
                    for s in range(0, len(val) - batch_size + 1, batch_size)
                ]
            )
        )
        event = stopper.update(epoch, {"mse": val_mse})
        if stopper.is_improvement:
            best = jax.tree.map(jnp.copy, nnx.state(model))
        log(f"pretrain epoch {epoch} | reconstruction MSE {val_mse:.4g}")
        if event is not None and event.level == "stop":
            log(f"pretrain stopped: {event.message}")
            break
    nnx.update(model, best)  # Keep the encoder of the best validation epoch.
    return {
        "epochs": epoch + 1,
        "best_epoch": stopper.best_epoch,
        "best_val_mse": stopper.best_value,
    }


def audit(config: ConfigDict, splits) -> dict:
    """Target distribution per split, and the loss weight high targets get (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures: `count`, `mean`, `std`
      and `skew` (population moments, ddof 0, as `scipy.stats.skew`), `min`, quantiles
      `q05` `q25` `median` `q75` `q95`, `max`, `above_threshold` (fraction of targets above
      `loss.overweight_threshold`) and `at_ceiling` (fraction at the generator's clip value
      `data.TARGET_MAX`).
    """
    threshold, factor = config.loss.overweight_threshold, config.loss.overweight_factor
    result: dict = {}
    for name, split in splits.items():
        target = np.asarray(split["target"], np.float64)
        centred = target - target.mean()
        std = float(np.sqrt(np.mean(centred**2)))
        # A constant target has no skew: 0/0 is reported as NaN, not raised.
        skew = float(np.mean(centred**3) / std**3) if std > 0 else float("nan")
        q05, q25, median, q75, q95 = np.quantile(target, [0.05, 0.25, 0.5, 0.75, 0.95])
        result[name] = {
            "count": int(target.size),
            "mean": float(target.mean()),
            "std": std,
            "skew": skew,
            "min": float(target.min()),
            "q05": float(q05),
            "q25": float(q25),
            "median": float(median),
            "q75": float(q75),
            "q95": float(q95),
            "max": float(target.max()),
            "above_threshold": float(np.mean(target > threshold)),
            "at_ceiling": float(np.mean(target >= data_lib.TARGET_MAX)),
        }
    train = result["train"]
    high = train["above_threshold"]
    share = factor * high / (factor * high + 1.0 - high) if high > 0 else 0.0
    advice = [
        f"train: {high:.1%} of targets lie above loss.overweight_threshold={threshold:g}; with "
        f"loss.overweight_factor={factor:g} they carry {share:.1%} of the base loss weight"
        + (
            f" (a factor of {(1.0 - high) / high:.3g} would give them half)" if 0 < high < 1 else ""
        ),
        f"train: skew {train['skew']:.2f}, mean {train['mean']:.3f} vs median "
        f"{train['median']:.3f}; {train['at_ceiling']:.1%} of targets sit at the clip value "
        f"{data_lib.TARGET_MAX:g}",
    ]
    result["recommendations"] = advice
    return result
