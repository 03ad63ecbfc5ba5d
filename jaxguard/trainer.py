"""The training harness shared by every task: `train_and_evaluate(config, workdir)`.

A task (`jaxguard.tasks.contract.Task`) provides the data, the model, the composite loss, the
streaming metrics, its guards and its report lines; this module runs them: set up, then per
epoch train, evaluate, consult the guards and checkpoint, then test the best weights and write
the report. The jitted steps are in `jaxguard.steps`, batching in `jaxguard.batching`, the
optimizer in `jaxguard.optim`, the guards in `jaxguard.guards`, the files in
`jaxguard.run_outputs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import config as config_lib
from jaxguard import run_outputs, tasks
from jaxguard.batching import data_sharding, iterate_batches, split_size
from jaxguard.batching import steps_per_epoch as count_steps
from jaxguard.checkpoints import RunCheckpoints
from jaxguard.guards import BestCheckpoint, GuardCollection
from jaxguard.loop import (
    Run,
    RunStopped,
    consult_guards,
    evaluate_epoch,
    periodic_actions,
    save_checkpoint,
    train_epoch,
)
from jaxguard.optim import build_optimizer
from jaxguard.steps import (
    TrainState,
    evaluate,
    make_eval_step,
    make_predict,
    make_term_gradients,
    make_train_step,
)
from jaxguard.tasks.contract import RunSummary, Task
from jaxguard.writers import Console, CsvWriter, MultiWriter, TensorBoardWriter


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
      resume: continue from the latest checkpoint in `workdir` (optimizer state, step, RNG and
        guard states included).
      console: where progress and epoch lines go (stderr by default).
      on_epoch_end: called with the epoch number after each epoch is checkpointed (tests use
        it to interrupt a run).

    Returns:
      `RunSummary.as_dict()`: workdir, task, stopped_by (the guard event as a dict, or None),
      best_epoch, best_monitor, epochs_run, steps_per_epoch, train_seconds, param_count,
      pretrain and test (test-split metrics of the best checkpoint, else the last weights).
    """
    task = tasks.get_task(config.task)
    console = console or Console(progress=config.log.progress)
    run = start_run(
        config, task, workdir or config.workdir or default_workdir(config), console, resume=resume
    )
    started = time.monotonic()
    try:
        for epoch in range(run.start_epoch, config.train.epochs):
            run.epoch = epoch
            train_losses = train_epoch(run, epoch)
            val, val_outputs, val_batches = evaluate_epoch(run)
            is_best, stop = consult_guards(run, epoch, val, train_losses)
            save_checkpoint(run, epoch, is_best)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if stop is not None:
                if stop.guard == "collapse" and task.collapse_arrays is not None:
                    pred, target = task.collapse_arrays(val_outputs, val_batches)
                    run_outputs.dump_collapse(run.workdir, pred, target, stop)
                raise RunStopped(stop)
    except RunStopped as stopped:
        run.stopped_by = stopped.event
        console.line(f"stopped: {stopped.event.message}")
    return finish_run(run, time.monotonic() - started).as_dict()


# ----------------------------------------------------------------------------- set-up


def default_workdir(config: ConfigDict) -> str:
    return os.path.join("runs", f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}")


@dataclasses.dataclass
class Built:
    """What a config builds before training: the model pieces, the optimizer, the sizes."""

    model: nnx.Module
    graphdef: Any
    state: TrainState
    tx: optax.GradientTransformationExtraArgs
    schedule: optax.Schedule
    steps_per_epoch: int


def build(config: ConfigDict, task: Task, splits, prepare: Callable | None = None) -> Built:
    """Model, optimizer and initial state; `prepare(model)` runs before the state is taken."""
    steps = count_steps(config, split_size(splits["train"]))
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
    return Built(model, graphdef, state, tx, schedule, steps)


def prepare_workdir(config: ConfigDict, workdir: str, *, resume: bool) -> None:
    """Refuses to overwrite a run or to resume nothing; writes `config.json`."""
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


def make_guards(
    config: ConfigDict, task: Task, splits, loss_fn, steps_per_epoch: int
) -> tuple[GuardCollection, Any]:
    """The run's guards and best-checkpoint selection, checked against the task's metrics."""
    try:
        guards = GuardCollection.from_config(
            config.guard,
            task.guards(config, splits),
            loss_weights={name: term.weight for name, term in loss_fn.terms.items()},
            steps_per_epoch=steps_per_epoch,
            last_epoch=config.train.epochs - 1,
        )
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from None
    best = BestCheckpoint.from_config(config.guard)
    available = set(task.empty_metrics(config).compute()) | {"loss", "train_loss"}
    try:
        guards.check_metrics(available)
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from None
    if best is not None:
        try:
            best.check_metrics(available)
        except ValueError as error:
            raise config_lib.ConfigError(f"guard.best: {error}") from None
    return guards, best


def start_run(config: ConfigDict, task: Task, workdir: str, console: Console, *, resume: bool):
    """Checks the workdir, builds data, model, steps, guards and writers; restores on resume."""
    batch_sharding, replicated = data_sharding()
    if config.train.batch_size % jax.device_count():
        raise config_lib.ConfigError(
            f"train.batch_size={config.train.batch_size} is not divisible by the "
            f"{jax.device_count()} devices"
        )
    prepare_workdir(config, workdir, resume=resume)
    splits = task.make_splits(config)
    pretrained = {}

    def pretrain(model):
        if task.pretrain is not None:
            pretrained["summary"] = task.pretrain(config, model, splits, console.line)

    # A resumed run restores the pretrained weights from its checkpoint instead.
    built = build(config, task, splits, prepare=None if resume else pretrain)
    loss_fn = task.make_loss(config, splits, built.steps_per_epoch)
    param_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(built.state.params))
    train_size = split_size(splits["train"])
    console.line(
        f"{config.task}: {param_count:,} parameters, {train_size} training examples "
        f"({param_count / train_size:.1f} parameters per example), {built.steps_per_epoch} "
        f"steps per epoch, workdir {workdir}"
    )
    guards, best = make_guards(config, task, splits, loss_fn, built.steps_per_epoch)
    for line in task.startup_lines(config, splits) if task.startup_lines else ():
        console.line(line)
    empty_metrics = task.empty_metrics(config)
    eval_step = make_eval_step(built.graphdef, task, loss_fn)
    diag_batch = next(iterate_batches(splits["val"], config.eval.batch_size, drop_last=False))
    run = Run(
        config=config,
        task=task,
        workdir=workdir,
        console=console,
        splits=splits,
        graphdef=built.graphdef,
        schedule=built.schedule,
        steps_per_epoch=built.steps_per_epoch,
        param_count=param_count,
        train_step=make_train_step(built.graphdef, task, loss_fn, built.tx, built.schedule),
        eval_step=eval_step,
        term_gradients=(
            make_term_gradients(built.graphdef, task, loss_fn)
            if config.log.term_gradients
            else None
        ),
        empty_metrics=empty_metrics,
        guards=guards,
        best=best,
        checkpoints=RunCheckpoints(workdir, keep_latest=config.ckpt.keep_latest),
        writer=MultiWriter([]),
        epoch_csv=CsvWriter(os.path.join(workdir, "log.csv")),
        shard=lambda batch: jax.device_put(dict(batch), batch_sharding),
        replicated=replicated,
        actions=periodic_actions(config, diag_batch),
        state=built.state,
        pretrain=pretrained.get("summary"),
    )
    if resume:
        restore(run)
    run.state = jax.device_put(run.state, replicated)
    run.writer = MultiWriter(
        [
            TensorBoardWriter(
                os.path.join(workdir, "tensorboard"),
                histogram_bins=config.log.histogram_bins,
                purge_step=int(run.state.step) if resume else None,
            )
        ]
    )
    if not resume:
        run.writer.write_hparams(config_lib.flatten(config), {"param_count": param_count})
    return run


def restore(run: Run) -> None:
    """Continues from the latest checkpoint: state, epoch, history, guard and best states."""
    run.state, meta = run.checkpoints.restore_latest(run.state)
    run.start_epoch = run.epoch = meta["epoch"] + 1
    run.history = meta["history"]
    run.guards.load_state_dict(meta["guards"])
    if run.best is not None:
        run.best.load_state_dict(meta["best"])
    run_outputs.truncate_csv(os.path.join(run.workdir, "log.csv"), last_epoch=meta["epoch"])
    run_outputs.truncate_events(run.workdir, last_step=int(run.state.step))
    run.console.line(f"resumed from epoch {meta['epoch']} (step {int(run.state.step)})")


# ----------------------------------------------------------------------------- the end


def finish_run(run: Run, train_seconds: float) -> RunSummary:
    """Tests the best (else the last) weights; writes the report, predictions and summary."""
    config, task = run.config, run.task
    state, best_epoch = run.state, run.epoch
    restored = run.checkpoints.restore_best(state) if run.best is not None else None
    if restored is not None:
        state, best_meta = restored
        best_epoch = best_meta["epoch"]
    state = jax.device_put(state, run.replicated)
    test, test_outputs, test_batches = evaluate(
        run.eval_step,
        state,
        run.splits["test"],
        run.empty_metrics,
        config.eval.batch_size,
        run.shard,
    )
    summary = RunSummary(
        workdir=run.workdir,
        task=config.task,
        stopped_by=run.stopped_by,
        best_epoch=best_epoch,
        best_monitor=None if run.best is None else run.best.monitor.source,
        epochs_run=len(run.history),
        steps_per_epoch=run.steps_per_epoch,
        train_seconds=train_seconds,
        param_count=run.param_count,
        pretrain=run.pretrain,
        test=run_outputs.json_metrics(test),
        history=tuple(run.history),
    )
    export_lines = []
    if task.export is not None:
        predict = make_predict(run.graphdef, state, task)
        export_lines = task.export(config, run.workdir, predict, run.splits)
    report = task.report_lines(config, run.splits, summary)
    report += run_outputs.shared_report_lines(summary) + export_lines
    table = task.prediction_table(test_outputs, test_batches)
    run_outputs.write_outputs(run.workdir, summary, table, report)
    for line in export_lines:
        run.console.line(line)
    test_scalars = run_outputs.numbers_only(summary.test)
    run.writer.write_scalars(int(state.step), {f"test/{k}": v for k, v in test_scalars.items()})
    run.writer.close()
    run.checkpoints.close()
    report_path = os.path.join(run.workdir, "report.txt")
    run.console.line(f"done in {train_seconds:.0f} s; report: {report_path}")
    return summary


# ----------------------------------------------------------------------------- finished runs


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
    built = build(config, task, splits)
    checkpoints = RunCheckpoints(run_dir, keep_latest=config.ckpt.keep_latest)
    restored = checkpoints.restore_best(built.state) or checkpoints.restore_latest(built.state)
    checkpoints.close()
    if restored is None:
        raise config_lib.ConfigError(f"{run_dir}: no checkpoint to restore")
    state, _ = restored
    model = nnx.merge(built.graphdef, state.params, state.model_state)
    model.eval()
    return config, model, splits
