"""Optional self-supervised pretraining of the optical-depth frame encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import guards as guards_lib
from jaxguard.tasks.optical_depth.model import FrameDecoder, OpticalDepthRegressor


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
