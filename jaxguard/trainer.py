"""The training harness shared by every task: `train_and_evaluate(config, workdir)`.

A task is a module (see `jaxguard.tasks`) that provides the data, the model,
the composite loss, the streaming metrics and a few reporting hooks; this file
owns everything else: the optax chain, the jitted train and eval steps, the
guards, logging, checkpoints and the final report.

Model state is handled with flax.nnx split/merge: the step is a pure function of
`TrainState` (parameters, the rest of the model state such as dropout RNG counters
and batch statistics, the optimizer state and the step), jitted once with the
state buffers donated. nnx keeps the models readable (`model.head`, `model.train()`)
while the step stays a pure function whose state is a plain pytree for orbax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
from flax import nnx, struct
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from jaxguard import config as config_lib
from jaxguard import guards as guards_lib
from jaxguard import tasks
from jaxguard.checkpoints import RunCheckpoints
from jaxguard.writers import Console, CsvWriter, MultiWriter, TensorBoardWriter, format_value

Batch = Mapping[str, np.ndarray]
Split = Mapping[str, np.ndarray]


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes; a pytree of arrays."""

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    plateau_value: jax.Array  # The latest validation loss, fed to reduce_on_plateau.


class RunStopped(Exception):
    """Raised inside the loop when a guard stops the run; carries the guard event."""

    def __init__(self, event: guards_lib.GuardEvent):
        super().__init__(event.message)
        self.event = event


# ----------------------------------------------------------------------------- data


def split_size(split: Split) -> int:
    return len(next(iter(split.values())))


def iterate_batches(
    split: Split, batch_size: int, *, seed: int | None = None, drop_last: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `split`, shuffled by `np.random.default_rng(seed)` when a seed is given.

    The order depends only on the seed, so a resumed run sees the same batches.
    """
    size = split_size(split)
    order = np.arange(size) if seed is None else np.random.default_rng(seed).permutation(size)
    stop = size - size % batch_size if drop_last else size
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield {key: values[index] for key, values in split.items()}


def steps_per_epoch(config: ConfigDict, train_size: int) -> int:
    full = train_size // config.train.batch_size
    if full == 0:
        raise config_lib.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({train_size} examples)"
        )
    return min(full, config.train.steps_per_epoch) if config.train.steps_per_epoch else full


# ----------------------------------------------------------------------------- optimizer


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


def _plateau_scale(opt_state: optax.OptState) -> jax.Array:
    """The learning-rate factor of reduce_on_plateau in `opt_state`, or 1 without it."""
    is_plateau = lambda node: isinstance(node, optax.contrib.ReduceLROnPlateauState)
    found = [node for node in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(node)]
    return found[0].scale if found else jnp.ones(())


# ----------------------------------------------------------------------------- steps


def _group_norms(tree: nnx.State, prefix: str) -> dict[str, jax.Array]:
    """Global norm of each top-level parameter group (`grad_norm/encoder`, ...)."""
    pure = nnx.to_pure_dict(tree)
    return {f"{prefix}/{name}": optax.tree.norm(sub) for name, sub in pure.items()}


def make_train_step(graphdef, task, loss_fn, tx, schedule) -> Callable:
    """`train_step(state, batch) -> (state, measurements)`, jitted with `state` donated."""

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
            "lr": schedule(state.step) * _plateau_scale(opt_state),
            "nonfinite/consecutive": opt_state.notfinite_count,
            "nonfinite/total": opt_state.total_notfinite,
            **_group_norms(grads, "grad_norm"),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, measurements

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef, task, loss_fn) -> Callable:
    """`eval_step(state, metrics, batch) -> (metrics, outputs, loss_total)`, jitted, eval mode."""

    def eval_step(state: TrainState, metrics, batch: Batch):
        model = nnx.merge(graphdef, state.params, state.model_state)
        model.eval()
        outputs = task.forward(model, batch)
        total, _ = loss_fn(task.loss_inputs(outputs, batch), step=state.step)
        return task.update_metrics(metrics, outputs, batch), outputs, total

    return jax.jit(eval_step)


def evaluate(eval_step, state: TrainState, split: Split, empty_metrics, batch_size: int, shard):
    """Streams `split` through `eval_step`; returns `(metrics dict, outputs, batches)`.

    `loss` in the result is the example-weighted mean of the per-batch loss.
    """
    metrics = empty_metrics
    loss_sum, count = 0.0, 0
    outputs, batches = [], []
    for batch in iterate_batches(split, batch_size, drop_last=False):
        metrics, out, total = eval_step(state, metrics, shard(batch))
        size = split_size(batch)
        loss_sum += float(total) * size
        count += size
        outputs.append(jax.tree.map(np.asarray, out))
        batches.append(batch)
    result = dict(metrics.compute())
    result["loss"] = loss_sum / max(count, 1)
    joined_outputs = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    joined_batches = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return result, joined_outputs, joined_batches


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Guards:
    """The run's guards: the shared ones from `config.guard` and the task's own.

    A task guard has `update(epoch, metrics) -> GuardEvent | None` (called after each
    evaluation with the validation metrics plus `train_loss`), `state_dict()` and
    `load_state_dict()`, and optionally `update_step(step, epoch, scalars)` (called at
    every logging step with the train-step measurements).
    """

    early_stopping: guards_lib.EarlyStopping | None
    collapse: guards_lib.CollapseGuard | None
    nonfinite: guards_lib.NonFiniteGuard
    task_guards: dict[str, Any]

    @classmethod
    def from_config(cls, guard: ConfigDict, task_guards: dict[str, Any]) -> _Guards:
        stop, collapse = guard.early_stopping, guard.collapse
        return cls(
            early_stopping=guards_lib.EarlyStopping.from_config(stop) if stop.enabled else None,
            collapse=guards_lib.CollapseGuard.from_config(collapse) if collapse.enabled else None,
            nonfinite=guards_lib.NonFiniteGuard.from_config(guard.nonfinite),
            task_guards=task_guards,
        )

    def _all(self) -> dict[str, Any]:
        shared = {
            "early_stopping": self.early_stopping,
            "collapse": self.collapse,
            "nonfinite": self.nonfinite,
        }
        return {name: g for name, g in {**shared, **self.task_guards}.items() if g is not None}

    def per_evaluation(self) -> list[Any]:
        """Collapse and task guards first, early stopping last (it picks the best checkpoint)."""
        ordered = [self.collapse, *self.task_guards.values(), self.early_stopping]
        return [guard for guard in ordered if guard is not None]

    def per_step(self) -> list[Any]:
        return [g for g in self.task_guards.values() if hasattr(g, "update_step")]

    def state_dict(self) -> dict:
        return {name: guard.state_dict() for name, guard in self._all().items()}

    def load_state_dict(self, saved: Mapping[str, dict]) -> None:
        guards = self._all()
        for name, value in saved.items():
            if name in guards:
                guards[name].load_state_dict(value)


def load_run_config(run_dir: str) -> ConfigDict:
    """The resolved config a finished run saved in `RUN_DIR/config.json`, locked."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise config_lib.ConfigError(
            f"{run_dir}: no config.json (is this a jaxguard run directory?)"
        )
    with open(path) as f:
        config = ConfigDict(json.load(f))
    config.lock()
    return config


def restore_model(run_dir: str):
    """`(config, model, splits)` of a run, the model holding its best (else latest) weights.

    The model is in eval mode. Used by the tools that work on a finished run
    (`jaxguard.sample`, inference scripts).
    """
    config = load_run_config(run_dir)
    task = tasks.get_task(config.task)
    splits = task.make_splits(config)
    run = _build(config, task, splits)
    checkpoints = RunCheckpoints(run_dir, keep_latest=config.ckpt.keep_latest)
    restored = checkpoints.restore_best(run.state) or checkpoints.restore_latest(run.state)
    checkpoints.close()
    if restored is None:
        raise config_lib.ConfigError(f"{run_dir}: no checkpoint to restore")
    state, _ = restored
    model = nnx.merge(run.graphdef, state.params, state.model_state)
    model.eval()
    return config, model, splits


@dataclasses.dataclass
class _Build:
    """What a config builds before training: the model pieces, the optimizer, the sizes."""

    model: nnx.Module
    graphdef: Any
    state: TrainState
    tx: optax.GradientTransformationExtraArgs
    schedule: optax.Schedule
    steps_per_epoch: int


def _build(config: ConfigDict, task, splits, prepare: Callable | None = None) -> _Build:
    """Model, optimizer and initial state; `prepare(model)` runs before the state is taken."""
    steps = steps_per_epoch(config, split_size(splits["train"]))
    model = task.make_model(config, splits, nnx.Rngs(config.seed, dropout=config.seed + 1))
    if prepare is not None:
        prepare(model)
    tx, schedule = build_optimizer(
        config.optim, steps_per_epoch=steps, total_steps=steps * config.train.epochs
    )
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        plateau_value=jnp.zeros(()),
    )
    return _Build(model, graphdef, state, tx, schedule, steps)


def _default_workdir(config: ConfigDict) -> str:
    return os.path.join("runs", f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}")


def _data_sharding():
    """Batches split along their leading axis over every device; state replicated."""
    # Auto axes: with make_mesh's default Explicit axes, a scatter whose indices come from the
    # batch (Histogram.update in PointingMetrics) fails outside a mesh context.
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def _json_safe(values: Mapping[str, Any]) -> dict:
    return {
        k: (float(v) if isinstance(v, int | float | np.floating | np.integer) else v)
        for k, v in values.items()
    }


def train_and_evaluate(
    config: ConfigDict,
    workdir: str | None = None,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains `config.task` as `config` says, guarded, logged and checkpointed in `workdir`.

    Args:
      config: a loaded, validated config (`jaxguard.config.load_config`).
      workdir: the run directory; default `config.workdir` or `runs/<task>-<timestamp>`.
      resume: continue from the latest checkpoint in `workdir` (optimizer state,
        step, RNG and guard states included).
      console: where progress and epoch lines go (stderr by default).
      on_epoch_end: called with the epoch number after each epoch is checkpointed
        (tests use it to interrupt a run).

    Returns:
      A summary: `workdir`, `stopped_by` (guard event or None), `best_epoch`,
      `epochs_run`, `test` (test-split metrics from the best checkpoint) and
      `train_seconds`.
    """
    task = tasks.get_task(config.task)
    workdir = workdir or config.workdir or _default_workdir(config)
    console = console or Console(progress=config.log.progress)
    batch_sharding, replicated = _data_sharding()
    if config.train.batch_size % jax.device_count():
        raise config_lib.ConfigError(
            f"train.batch_size={config.train.batch_size} is not divisible by the "
            f"{jax.device_count()} devices"
        )
    shard = lambda batch: jax.device_put(dict(batch), batch_sharding)

    checkpoint_exists = os.path.isdir(os.path.join(workdir, "checkpoints", "latest"))
    if resume and not checkpoint_exists:
        raise config_lib.ConfigError(f"--resume: no checkpoint in {workdir}/checkpoints/latest")
    if checkpoint_exists and not resume:
        raise config_lib.ConfigError(
            f"--workdir {workdir} already holds a run; pass --resume to continue it or choose "
            "another workdir (nothing was overwritten)"
        )
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, os.path.join(workdir, "config.json"))

    splits = task.make_splits(config)
    pretrain_summary = {}

    def pretrain(model):
        pretrain_summary["result"] = _hook(task, "pretrain", None)(
            config, model, splits, console.line
        )

    # A resumed run restores the pretrained weights from its checkpoint instead.
    run = _build(config, task, splits, prepare=None if resume else pretrain)
    graphdef, state, schedule, steps = run.graphdef, run.state, run.schedule, run.steps_per_epoch
    loss_fn = task.make_loss(config, splits, steps)
    params = state.params
    param_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    console.line(
        f"{config.task}: {param_count:,} parameters, {split_size(splits['train'])} training "
        f"examples ({param_count / split_size(splits['train']):.1f} parameters per example), "
        f"{steps} steps per epoch, workdir {workdir}"
    )

    guards = _Guards.from_config(config.guard, _hook(task, "make_guards", {})(config, splits))
    val_metric_names = set(task.empty_metrics(config).compute()) | {"loss"}
    if guards.early_stopping is not None:
        try:
            guards.early_stopping.monitor.validate(val_metric_names)
        except ValueError as error:
            raise config_lib.ConfigError(f"guard.early_stopping.monitor: {error}") from None
    for line in _hook(task, "startup_lines", [])(config, splits):
        console.line(line)

    checkpoints = RunCheckpoints(workdir, keep_latest=config.ckpt.keep_latest)
    start_epoch = 0
    history: list[dict] = []
    if resume:
        arrays, meta = checkpoints.restore_latest(state)
        state = arrays
        start_epoch = meta["epoch"] + 1
        history = meta["history"]
        guards.load_state_dict(meta["guards"])
        console.line(f"resumed from epoch {meta['epoch']} (step {int(state.step)})")
    state = jax.device_put(state, replicated)

    csv_path = os.path.join(workdir, "log.csv")
    if resume:
        _truncate_csv(csv_path, last_epoch=start_epoch - 1)
    writer = MultiWriter(
        [
            TensorBoardWriter(
                os.path.join(workdir, "tensorboard"),
                histogram_bins=config.log.histogram_bins,
                purge_step=int(state.step) if resume else None,
            ),
        ]
    )
    epoch_csv = CsvWriter(csv_path)
    if not resume:
        writer.write_hparams(config_lib.flatten(config), {"param_count": param_count})

    train_step = make_train_step(graphdef, task, loss_fn, run.tx, schedule)
    eval_step = make_eval_step(graphdef, task, loss_fn)
    empty_metrics = task.empty_metrics(config)
    diag_batch = next(iterate_batches(splits["val"], config.eval.batch_size, drop_last=False))

    stopped_by = None
    started = time.monotonic()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.train.epochs):
            train_losses = []
            batches = iterate_batches(
                splits["train"],
                config.train.batch_size,
                seed=config.seed * 100_003 + epoch,
                drop_last=True,
            )
            for index, batch in zip(range(steps), batches, strict=False):
                state, measurements = train_step(state, shard(batch))
                step = int(state.step)
                if step % config.log.every_steps == 0 or index == steps - 1:
                    scalars = {k: float(v) for k, v in measurements.items()}
                    train_losses.append(scalars["loss"])
                    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                    event = guards.nonfinite.update(
                        step,
                        int(scalars["nonfinite/consecutive"]),
                        int(scalars["nonfinite/total"]),
                        scalars,
                    )
                    _handle(event, console)
                    for guard in guards.per_step():
                        _handle(guard.update_step(step, epoch, scalars), console)
                    console.progress(epoch, index + 1, steps, scalars["loss"])
                if step % config.log.diagnostics_every_steps == 0:
                    _write_diagnostics(
                        writer,
                        step,
                        task,
                        eval_step,
                        state,
                        empty_metrics,
                        diag_batch,
                        shard,
                        graphdef,
                    )

            val, val_outputs, val_batches = evaluate(
                eval_step, state, splits["val"], empty_metrics, config.eval.batch_size, shard
            )
            # Placed like the rest of the state: an uncommitted array would recompile the step.
            plateau_value = jax.device_put(jnp.asarray(val["loss"], jnp.float32), replicated)
            state = state.replace(plateau_value=plateau_value)
            step = int(state.step)
            writer.write_scalars(step, {f"val/{k}": v for k, v in val.items() if _is_number(v)})
            writer.write_histograms(step, task.histograms(val_outputs, val_batches))
            writer.write_histograms(step, _weight_histograms(state.params))
            writer.write_images(step, _hook(task, "images", {})(val_outputs, val_batches))

            train_loss = float(np.mean(train_losses)) if train_losses else math.nan
            is_best, stop_event = _update_epoch_guards(
                guards, epoch, {**val, "train_loss": train_loss}, console
            )
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in val.items() if _is_number(v)},
            }
            history.append(record)
            volatility = _volatility([h["val_loss"] for h in history])
            if math.isfinite(volatility):
                writer.write_scalars(step, {"val/loss_change": volatility})
            epoch_csv.write_scalars(
                step,
                {
                    **record,
                    "val_loss_change": volatility,
                    "lr": float(schedule(step - 1) * _plateau_scale(state.opt_state)),
                },
            )
            console.line(_epoch_line(task, epoch, record, val, guards))
            checkpoints.save(
                step,
                state,
                {"epoch": epoch, "history": history, "guards": guards.state_dict()},
                is_best=is_best,
            )
            writer.flush()
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if stop_event is not None:
                if stop_event.guard == "collapse":
                    _dump_collapse(workdir, val_outputs, val_batches, task, stop_event)
                raise RunStopped(stop_event)
    except RunStopped as stopped:
        stopped_by = stopped.event
        console.line(f"stopped: {stopped.event.message}")
    train_seconds = time.monotonic() - started

    best = checkpoints.restore_best(state) if guards.early_stopping is not None else None
    if best is not None:
        state, best_meta = best
        best_epoch = best_meta["epoch"]
    else:
        best_epoch = epoch
    test, test_outputs, test_batches = evaluate(
        eval_step,
        jax.device_put(state, replicated),
        splits["test"],
        empty_metrics,
        config.eval.batch_size,
        shard,
    )
    summary = {
        "workdir": workdir,
        "task": config.task,
        "stopped_by": None if stopped_by is None else dataclasses.asdict(stopped_by),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": train_seconds,
        "param_count": param_count,
        "pretrain": pretrain_summary.get("result"),
        "test": _json_safe({k: v for k, v in test.items() if _is_number(v)}),
    }
    predict = _make_predict(graphdef, jax.device_put(state, replicated), task)
    export_lines = _hook(task, "export", [])(config, workdir, predict, splits)
    _write_outputs(
        workdir,
        summary,
        task.prediction_table(test_outputs, test_batches),
        task.report_lines(config, splits, summary) + export_lines,
    )
    for line in export_lines:
        console.line(line)
    writer.write_scalars(int(state.step), {f"test/{k}": v for k, v in summary["test"].items()})
    writer.close()
    checkpoints.close()
    console.line(f"done in {train_seconds:.0f} s; report: {os.path.join(workdir, 'report.txt')}")
    return summary


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.floating | np.integer)


def _handle(event: guards_lib.GuardEvent | None, console: Console) -> None:
    if event is None:
        return
    if event.level == "stop":
        raise RunStopped(event)
    console.line(f"{event.level}: {event.message}")


def _update_epoch_guards(guards: _Guards, epoch: int, metrics: dict, console: Console):
    """Runs the per-evaluation guards; returns (is_best, first stop event or None)."""
    stop_event = None
    for guard in guards.per_evaluation():
        event = guard.update(epoch, metrics)
        if event is not None and event.level == "stop":
            stop_event = stop_event or event
        elif event is not None:
            console.line(f"{event.level}: {event.message}")
    is_best = guards.early_stopping is not None and guards.early_stopping.is_improvement
    return is_best, stop_event


def _make_predict(graphdef, state: TrainState, task) -> Callable:
    """`predict(batch) -> outputs`: `task.forward` of the given state in eval mode, jitted."""

    @jax.jit
    def predict(batch):
        model = nnx.merge(graphdef, state.params, state.model_state)
        model.eval()
        return task.forward(model, batch)

    return predict


def _hook(task, name: str, default):
    """An optional task hook, or a function returning `default` when the task has none."""
    return getattr(task, name, lambda *args: default)


def _volatility(losses: list[float]) -> float:
    """Relative change of the validation loss since the previous epoch (seed 002's symptom)."""
    if len(losses) < 2 or not losses[-2]:
        return math.nan
    return (losses[-1] - losses[-2]) / abs(losses[-2])


def _epoch_line(task, epoch: int, record: dict, val: dict, guards: _Guards) -> str:
    parts = [
        f"epoch {epoch}",
        f"loss {format_value(record['train_loss'])}",
        f"val loss {format_value(val['loss'])}",
    ]
    parts += [f"{label} {format_value(val[key])}" for label, key in task.EPOCH_LINE]
    stopper = guards.early_stopping
    if stopper is not None and stopper.best_epoch is not None:
        parts.append(
            f"best {stopper.monitor.source} {format_value(stopper.best_value)} "
            f"@ {stopper.best_epoch}"
        )
    return " | ".join(parts)


def _write_diagnostics(writer, step, task, eval_step, state, empty_metrics, batch, shard, graphdef):
    """Validation-batch prediction figures and the output layer's weight norm."""
    metrics, outputs, _ = eval_step(state, empty_metrics, shard(batch))
    computed = metrics.compute()
    scalars = {f"diag/{k}": computed[k] for k in task.DIAGNOSTIC_KEYS}
    model = nnx.merge(graphdef, state.params, state.model_state)
    head = nnx.to_pure_dict(nnx.state(task.head(model), nnx.Param))
    scalars["diag/head_weight_norm"] = float(optax.tree.norm(head))
    writer.write_scalars(step, scalars)
    writer.write_histograms(step, task.histograms(jax.tree.map(np.asarray, outputs), batch))


def _weight_histograms(params: nnx.State) -> dict[str, np.ndarray]:
    flat = jax.tree.leaves_with_path(nnx.to_pure_dict(params))
    return {
        "weights/" + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(value)
        for path, value in flat
    }


def _dump_collapse(workdir, outputs, batches, task, event) -> None:
    if not hasattr(task, "collapse_arrays"):
        return
    pred, target = task.collapse_arrays(outputs, batches)
    figures = guards_lib.collapse_diagnostics(pred, target)
    figures["message"] = event.message
    with open(os.path.join(workdir, "collapse_diagnostics.json"), "w") as f:
        json.dump(figures, f, indent=2)


def _truncate_csv(path: str, *, last_epoch: int) -> None:
    """Drops rows written after the checkpoint a resumed run restarts from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    header = lines[0].rstrip("\n").split(",")
    epoch_col = header.index("epoch")
    kept = [lines[0]] + [
        line for line in lines[1:] if float(line.split(",")[epoch_col]) <= last_epoch
    ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)  # Atomic: a crash here leaves the old log, never half of it.


def _write_outputs(workdir: str, summary: dict, table: Mapping[str, np.ndarray], report: list[str]):
    with open(os.path.join(workdir, "test_metrics.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    columns = list(table)
    rows = np.stack([np.asarray(table[c], np.float64) for c in columns], axis=1)
    np.savetxt(
        os.path.join(workdir, "predictions.csv"),
        rows,
        delimiter=",",
        header=",".join(columns),
        comments="",
        fmt="%.6g",
    )
    with open(os.path.join(workdir, "report.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
