"""The optax chain a config describes, and the learning rate it applies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import optax.contrib
from ml_collections import ConfigDict


def build_optimizer(
    optim: ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """The optax chain of a config and its learning-rate schedule.

    `apply_if_finite(chain(clip, optimizer(schedule), reduce_on_plateau))`: a
    non-finite gradient skips the update and is counted in the optimizer state;
    the harness stops the run after `guard.nonfinite.max_consecutive` in a row.
    """
    warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
    if optim.schedule == "cosine":
        schedule = optax.schedules.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=optim.lr,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=optim.lr * optim.final_lr_ratio,
        )
    else:
        schedule = optax.schedules.join_schedules(
            [
                optax.schedules.linear_schedule(0.0, optim.lr, max(warmup_steps, 1)),
                optax.schedules.constant_schedule(optim.lr),
            ],
            boundaries=[warmup_steps],
        )
    if optim.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=optim.weight_decay)
    elif optim.optimizer == "adam":
        optimizer = optax.adam(schedule)
    else:
        optimizer = optax.sgd(schedule, momentum=optim.momentum)
    parts = []
    if optim.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(optimizer)
    if optim.plateau.enabled:
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=optim.plateau.factor,
                patience=optim.plateau.patience,
                rtol=optim.plateau.rtol,
                cooldown=optim.plateau.cooldown,
                # The same validation loss is fed at every step of an epoch: one decision per epoch.
                accumulation_size=steps_per_epoch,
                min_scale=optim.plateau.min_scale,
            )
        )
    # Never let apply_if_finite apply a non-finite update: the guard stops the run instead.
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30), schedule


def plateau_scale(opt_state: optax.OptState) -> jax.Array:
    """The learning-rate factor of reduce_on_plateau in `opt_state`, or 1 without it."""
    is_plateau = lambda node: isinstance(node, optax.contrib.ReduceLROnPlateauState)
    found = [node for node in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(node)]
    return found[0].scale if found else jnp.ones(())
