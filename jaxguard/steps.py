"""The jitted steps of the harness: train, evaluate, predict, as pure functions of `TrainState`.

Model state is handled with flax.nnx split/merge: a step is a pure function of `TrainState`
(parameters, the rest of the model state such as dropout RNG counters and batch statistics,
the optimizer state and the step), jitted once with the state buffers donated. nnx keeps the
models readable (`model.head`, `model.train()`) while the step stays a pure function whose
state is a plain pytree for orbax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jaxguard.batching import Batch, Split, iterate_batches, split_size
from jaxguard.distributed import host_tree, local_tree
from jaxguard.optim import plateau_scale
from jaxguard.tasks.contract import Task


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes; a pytree of arrays."""

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    plateau_value: jax.Array  # The latest validation loss, fed to reduce_on_plateau.


def group_norms(tree: nnx.State, prefix: str) -> dict[str, jax.Array]:
    """Global norm of each top-level parameter group (`grad_norm/encoder`, ...)."""
    pure = nnx.to_pure_dict(tree)
    return {f"{prefix}/{name}": optax.tree.norm(sub) for name, sub in pure.items()}


def make_train_step(graphdef, task: Task, loss_fn, tx, schedule) -> Callable:
    """`train_step(state, batch) -> (state, measurements)`, jitted with `state` donated.

    Measurements: `loss`, `loss/<term>` (raw, weight, weighted), `grad_norm`,
    `grad_norm/<module>`, `update_norm`, `lr` and the skip counters `nonfinite/consecutive`
    and `nonfinite/total`.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, state.params, state.model_state)
        model.train()

        def objective(model):
            outputs = task.forward(model, batch)
            return loss_fn(task.loss_inputs(outputs, batch), step=state.step)

        # nnx.value_and_grad differentiates the Params and lets dropout advance its RNG state.
        (loss, terms), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        # A non-finite loss with finite gradients must still skip the update.
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, value=state.plateau_value
        )
        finite = opt_state.notfinite_count == 0
        params = optax.apply_updates(state.params, updates)
        model_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), model_state, state.model_state
        )
        measurements = {
            "loss": loss,
            **{f"loss/{name}": value for name, value in terms.items()},
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "lr": schedule(state.step) * plateau_scale(opt_state),
            "nonfinite/consecutive": opt_state.notfinite_count,
            "nonfinite/total": opt_state.total_notfinite,
            **group_norms(grads, "grad_norm"),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, measurements

    return jax.jit(train_step, donate_argnums=0)


def make_term_gradients(graphdef, task: Task, loss_fn) -> Callable:
    """`term_gradients(state, batch) -> {"terms/<t>/value", "terms/<t>/grad_share"}`, jitted.

    For each term `t` of the composite loss, on `batch` in train mode at `state`: its raw value
    and its share of the gradient,

        share_t = ||d (w_t L_t) / d params|| / sum_s ||d (w_s L_s) / d params||,

    from one forward pass (so every term sees the same dropout masks) and one backward pass
    vectorised over the terms: the vector-Jacobian product of the weighted terms `[T]` with
    each row of the identity `[T, T]`. (A separate forward and backward pass per term, as
    before, compiled T times the graph: 3.9 s of compilation on the optical-depth model.) The
    state is read, never written: the dropout RNG counters the forward pass advances are
    dropped, so measuring does not change the run. When every term's gradient is zero, all
    shares are 0.
    """
    names = tuple(loss_fn.terms)

    def term_gradients(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        # The model state (dropout RNG counters) is a primal too: nnx refuses to advance a
        # counter from outside the trace that reads it. Its cotangent is dropped.
        def weighted_terms(params, model_state):
            model = nnx.merge(graphdef, params, model_state)
            model.train()
            outputs = task.forward(model, batch)
            _, terms = loss_fn(task.loss_inputs(outputs, batch), step=state.step)
            weighted = jnp.stack([terms[f"{name}/weighted"] for name in names])
            return weighted, {name: terms[name] for name in names}

        weighted, vjp, values = jax.vjp(
            weighted_terms, state.params, state.model_state, has_aux=True
        )
        grads, _ = jax.vmap(vjp)(jnp.eye(len(names), dtype=weighted.dtype))
        norms = jax.vmap(optax.tree.norm)(grads)  # [T]
        shares = norms / jnp.maximum(jnp.sum(norms), jnp.finfo(norms.dtype).tiny)
        result = {}
        for index, name in enumerate(names):
            result[f"terms/{name}/value"] = values[name]
            result[f"terms/{name}/grad_share"] = shares[index]
        return result

    return jax.jit(term_gradients)


def make_eval_step(graphdef, task: Task, loss_fn) -> Callable:
    """`eval_step(state, metrics, batch) -> (metrics, outputs, loss_total)`, jitted, eval mode."""

    def eval_step(state: TrainState, metrics, batch: Batch):
        model = nnx.merge(graphdef, state.params, state.model_state)
        model.eval()
        outputs = task.forward(model, batch)
        total, _ = loss_fn(task.loss_inputs(outputs, batch), step=state.step)
        return task.update_metrics(metrics, outputs, batch), outputs, total

    return jax.jit(eval_step)


def make_predict(graphdef, state: TrainState, task: Task) -> Callable:
    """`predict(batch) -> outputs`: `task.forward` of the given state in eval mode, jitted."""

    @jax.jit
    def predict(batch):
        model = nnx.merge(graphdef, state.params, state.model_state)
        model.eval()
        return task.forward(model, batch)

    return predict


def evaluate(
    eval_step, state: TrainState, split: Split, empty_metrics, batch_size: int, shard
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Streams `split` through `eval_step`; returns `(metrics dict, outputs, batches)`.

    `loss` in the result is the example-weighted mean of the per-batch loss; outputs and
    batches are joined over the split, `[N, ...]` each.
    """
    metrics = empty_metrics
    loss_sum, count = 0.0, 0
    outputs, batches = [], []
    for batch in iterate_batches(split, batch_size, drop_last=False):
        metrics, out, total = eval_step(state, metrics, shard(batch))
        size = split_size(batch)
        loss_sum += float(total) * size
        count += size
        outputs.append(host_tree(out))
        batches.append(batch)
    result = dict(local_tree(metrics).compute())
    result["loss"] = loss_sum / max(count, 1)
    return result, _join(outputs), _join(batches)


def _join(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
