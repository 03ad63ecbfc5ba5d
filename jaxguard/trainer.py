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
import itertools
import json
import os
import shutil
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
from jaxguard import figures as figures_lib
from jaxguard import run_outputs, tasks
from jaxguard.batching import data_sharding, iterate_batches, place_batch, split_size
from jaxguard.batching import steps_per_epoch as count_steps
from jaxguard.checkpoints import RunCheckpoints, committed_steps, describe_error
from jaxguard.distributed import barrier, is_writer, local_tree, replicate, silent
from jaxguard.guards import BestCheckpoint, GuardCollection, GuardEvent
from jaxguard.loop import (
    Interrupt,
    Run,
    RunInterrupted,
    RunStopped,
    compile_ahead,
    consult_guards,
    evaluate_epoch,
    pause_point,
    periodic_actions,
    raise_interrupted,
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
    interrupt: Interrupt | None = None,
) -> dict[str, Any]:
    """Trains `config.task` as `config` says, guarded, logged and checkpointed in `workdir`.

    Args:
      config: a loaded, validated config (`jaxguard.config.load_config`).
      workdir: the run directory; default `config.workdir` or `runs/<task>-<timestamp>`.
      resume: continue from the latest checkpoint in `workdir` (optimizer state, step, RNG and
        guard states included); a workdir whose checkpoints folder holds no committed
        checkpoint starts from scratch.
      console: where progress and epoch lines go (stderr by default).
      on_epoch_end: called with the epoch number after each epoch is checkpointed (tests use
        it to interrupt a run).
      interrupt: set by signal handlers (`Interrupt.installed`); when it holds a signal the
        run stops after the current step with a checkpoint and raises `RunInterrupted`.

    Returns:
      `RunSummary.as_dict()`: workdir, task, stopped_by (the guard event as a dict, or None),
      best_epoch, best_monitor, epochs_run, steps_per_epoch, train_seconds, param_count,
      pretrain and test (test-split metrics of the best checkpoint, else the last weights).
    """
    task = tasks.get_task(config.task)
    console = console or (Console(progress=config.log.progress) if is_writer() else silent())
    run = start_run(
        config, task, workdir or config.workdir or default_workdir(config), console, resume=resume
    )
    run.interrupt = interrupt or run.interrupt
    started = time.monotonic()
    try:
        train_epochs(run, on_epoch_end)
        if run.interrupt.pending() is not None:
            raise_interrupted(run)
    except RunStopped as stopped:
        run.stopped_by = stopped.event
        console.line(f"stopped: {stopped.event.message}")
        if stopped.event.guard == "collapse" and stopped.event.step is not None:
            dump_collapse_inside_epoch(run, stopped.event)
    except RunInterrupted:
        run.writer.close()
        run.checkpoints.close()
        raise
    return finish_run(run, time.monotonic() - started).as_dict()


def train_epochs(run: Run, on_epoch_end: Callable[[int], None] | None) -> None:
    """The epochs from `run.start_epoch` on; raises `RunStopped` or `RunInterrupted`."""
    if run.stopped_by is not None:  # Resumed after the guard's stop was checkpointed.
        raise RunStopped(run.stopped_by)
    for epoch in range(run.start_epoch, run.config.train.epochs):
        if run.interrupt.pending() is not None:
            raise_interrupted(run)
        run.epoch = epoch
        train = train_epoch(run, epoch)
        val, val_outputs, val_batches = evaluate_epoch(run)
        is_best, stop = consult_guards(run, epoch, val, train)
        save_checkpoint(run, epoch, is_best, stop=stop)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if stop is not None:
            if stop.guard == "collapse":
                write_collapse_dump(run, val_outputs, val_batches, stop)
            raise RunStopped(stop)


def dump_collapse_inside_epoch(run: Run, event) -> None:
    """`collapse_diagnostics.json` for a collapse stopped on the diagnostics cadence.

    A stop at an evaluation dumps that evaluation's predictions; one inside an epoch has only
    seen one batch, so the whole validation split is predicted here, without logging it.
    """
    if run.task.collapse_arrays is None:
        return
    _, outputs, batches = evaluate(
        run.eval_step,
        run.state,
        run.splits["val"],
        run.empty_metrics,
        run.config.eval.batch_size,
        run.shard,
    )
    write_collapse_dump(run, outputs, batches, event)


def write_collapse_dump(run: Run, outputs, batches, event) -> None:
    """`collapse_diagnostics.json` from validation outputs (process 0; tasks with the hook)."""
    if run.task.collapse_arrays is not None and is_writer():
        pred, target = run.task.collapse_arrays(outputs, batches)
        run_outputs.dump_collapse(run.workdir, pred, target, event)


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


# What a run writes besides its checkpoints; an attempt that committed none leaves only these.
ATTEMPT_FILES = ("log.csv", run_outputs.EVENTS_FILE, "tensorboard")


def prepare_workdir(config: ConfigDict, workdir: str, *, resume: bool, console: Console) -> bool:
    """Refuses to overwrite a run or to resume nothing; writes `config.json`.

    A workdir whose `checkpoints/latest` holds no committed checkpoint (the run was killed
    before its first save) is not a run: with or without --resume it starts from scratch,
    after removing what the attempt left (`ATTEMPT_FILES`). On resume the config is compared
    with the saved `config.json` (`config_lib.resume_changes`).

    With several processes, every process checks and process 0 alone writes.

    Returns:
      Whether there is a checkpoint to resume from.
    """
    latest = os.path.join(workdir, "checkpoints", "latest")
    if resume and not os.path.isdir(latest):
        raise config_lib.ConfigError(f"--resume: no checkpoint in {workdir}/checkpoints/latest")
    committed = bool(committed_steps(latest))
    if committed and not resume:
        raise config_lib.ConfigError(
            f"--workdir {workdir} already holds a run; pass --resume to continue it or choose "
            "another workdir (nothing was overwritten)"
        )
    path = os.path.join(workdir, "config.json")
    if committed:
        record_config_changes(config, path, console)
        return True
    if os.path.isdir(latest):
        console.line(
            f"{latest} holds no committed checkpoint (the run stopped before its first save): "
            "starting from scratch"
        )
    if is_writer():
        os.makedirs(workdir, exist_ok=True)
        if os.path.isdir(latest):
            remove_attempt_files(workdir)
        config_lib.save_config(config, path)
    return False


def remove_attempt_files(workdir: str) -> None:
    """Removes the logs of an attempt that committed no checkpoint, so the restart is clean."""
    for name in ATTEMPT_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def record_config_changes(config: ConfigDict, path: str, console: Console) -> None:
    """Refuses changes a resume cannot take; notes the others and keeps the old config file.

    The saved `config.json` is renamed `config.<n>.json` (n = 1, 2, ...) and the new config
    written in its place, so the run directory records every config it ran under.
    """
    changes = config_lib.resume_changes(config, path, warn=console.line)
    if not changes:
        return
    config_lib.check_resume_changes(changes)
    barrier("every process read config.json")
    if not is_writer():
        return
    kept = next(
        candidate
        for n in itertools.count(1)
        if not os.path.exists(candidate := os.path.join(os.path.dirname(path), f"config.{n}.json"))
    )
    os.replace(path, kept)
    config_lib.save_config(config, path)
    listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)
    console.line(f"resume with a changed config: {listed} (previous config kept as {kept})")


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
    resume = prepare_workdir(config, workdir, resume=resume, console=console)
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
    writing = is_writer()  # Process 0 writes the logs; the others log nowhere.
    for line in task.startup_lines(config, splits) if task.startup_lines else ():
        console.line(line)
    # Committed like the metrics each eval step returns: one compiled step for the first batch
    # and the others (an uncommitted first argument compiled a second copy).
    empty_metrics = jax.device_put(task.empty_metrics(config), replicated)
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
        epoch_csv=CsvWriter(os.path.join(workdir, "log.csv")) if writing else MultiWriter([]),
        shard=lambda batch: place_batch(batch, batch_sharding, replicated),
        batch_sharding=batch_sharding,
        replicated=replicated,
        actions=periodic_actions(config, diag_batch),
        # Placed before a restore, so that orbax restores onto this run's devices.
        state=replicate(built.state, replicated),
        pretrain=pretrained.get("summary"),
    )
    if resume:
        try:
            restore(run)
        except BaseException:
            run.checkpoints.close()  # Orbax's background threads end before the error does.
            raise
    run.writer = MultiWriter(
        [
            TensorBoardWriter(
                os.path.join(workdir, "tensorboard"),
                histogram_bins=config.log.histogram_bins,
                purge_step=int(run.state.step) if resume else None,
            )
        ]
        if writing and config.log.tensorboard
        else []
    )
    run.compiling = compile_ahead(run, diag_batch)
    return run


def restore(run: Run) -> None:
    """Continues from the latest checkpoint: state, epoch, history, guard and best states.

    A mid-epoch checkpoint (`meta["in_epoch"]`) continues its epoch after the steps it
    trained; a checkpoint of a run a guard stopped finishes that run.
    """
    run.state, meta = run.checkpoints.restore_latest(
        run.state, check=checkpoint_check(run.steps_per_epoch), warn=run.console.line
    )
    in_epoch = meta.get("in_epoch")
    run.epoch = meta["epoch"]
    run.start_epoch = meta["epoch"] + (0 if in_epoch else 1)
    run.resume_steps = in_epoch["steps"] if in_epoch else 0
    if in_epoch:
        # float32, as the device sum it was read from: the resumed epoch sums the same way.
        run.train_sums = {k: np.float32(v) for k, v in in_epoch["train_sums"].items()}
        run.train_steps = int(in_epoch["train_steps"])
    run.history = meta["history"]
    if meta.get("stopped_by"):
        run.stopped_by = GuardEvent(**meta["stopped_by"])
    try:
        run.guards.load_state_dict(meta["guards"])
        if run.best is not None:
            run.best.load_state_dict(meta["best"])
    except (ValueError, KeyError, TypeError) as error:
        raise config_lib.ConfigError(
            f"--resume: the checkpoint's guard states do not fit this config ({error})"
        ) from None
    step = run.saved_step = int(run.state.step)
    if is_writer():
        log = os.path.join(run.workdir, "log.csv")
        run_outputs.truncate_csv(log, last_epoch=len(run.history) - 1)
        run_outputs.truncate_events(run.workdir, last_step=step)
    repair_best(run, step, meta)
    where = f"epoch {meta['epoch']}" + (f", {run.resume_steps} steps in" if in_epoch else "")
    run.console.line(f"resumed from {where} (step {step})")


def checkpoint_check(steps_per_epoch: int) -> Callable[[int, Any, dict], None]:
    """`check(step, arrays, meta)` for `restore_latest`: the meta fits the arrays' step.

    A full-epoch save of epoch e is at step `(e + 1) * steps_per_epoch` with e + 1 history
    records; a mid-epoch one after k steps at `e * steps_per_epoch + k` with e records.
    """

    def check(step: int, arrays: Any, meta: dict) -> None:
        epoch, history = meta["epoch"], meta["history"]
        in_epoch = meta.get("in_epoch")
        done = in_epoch["steps"] if in_epoch else steps_per_epoch
        records = epoch if in_epoch else epoch + 1
        expected = epoch * steps_per_epoch + done
        if not (int(arrays.step) == step == expected and len(history) == records):
            raise ValueError(
                f"meta says epoch {epoch} ({len(history)} history records), which does not "
                f"fit step {step} at {steps_per_epoch} steps per epoch"
            )
        if not isinstance(meta["guards"], dict):
            raise ValueError("meta holds no guard states")

    return check


def expected_best_step(run: Run) -> int | None:
    """The step of the save `run.best` names as the best, or None when there is none yet."""
    if run.best is None or run.best.best_epoch is None:
        return None
    return (run.best.best_epoch + 1) * run.steps_per_epoch


def repair_best(run: Run, step: int, meta: dict) -> None:
    """Makes `best/` agree with the restored meta's best epoch, after a crash between saves.

    A best save newer than the restored step (left by a newer save that was set aside) is
    set aside as `<step>.stale`; when the restored step is itself the best and `best/`
    lacks it (killed between `latest/` and `best/`), it is saved to `best/` again.
    """
    on_disk = committed_steps(run.checkpoints.best_dir)
    if on_disk and on_disk[0] > step:
        moved = run.checkpoints.set_aside(run.checkpoints.best_dir, on_disk[0], "stale")
        run.console.line(f"warning: best checkpoint newer than the resumed step set aside: {moved}")
        on_disk = committed_steps(run.checkpoints.best_dir)
    if "in_epoch" not in meta and expected_best_step(run) == step and step not in on_disk:
        run.checkpoints.save_best(step, run.state, meta)
        run.console.line(f"best checkpoint of step {step} was missing: saved again from latest")


# ----------------------------------------------------------------------------- the end


def finish_run(run: Run, train_seconds: float) -> RunSummary:
    """Tests the best (else the last) weights; writes the report, predictions and summary."""
    config, task = run.config, run.task
    run.writer.wait()  # The last evaluation's image: matplotlib draws one figure at a time.
    state, best_epoch, notes = tested_weights(run)
    for note in notes:
        run.console.line(note)
    state = replicate(state, run.replicated)
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
    if task.export is not None and is_writer():
        # The exporting process alone predicts, on its own copy of the weights.
        predict = make_predict(run.graphdef, local_tree(state), task)
        export_lines = task.export(config, run.workdir, predict, run.splits)
    step = int(state.step)
    if is_writer():
        figures = {"learning_curves": run_outputs.learning_curve_figure(summary)}
        if task.figures is not None:
            figures |= task.figures(config, run.splits, summary, test_outputs, test_batches)
        figures_lib.write_figures(run.workdir, figures, run.writer, step)
        figure_dir = os.path.join(run.workdir, figures_lib.FIGURE_DIR)
        export_lines.append(f"figures: {figure_dir}/ ({', '.join(figures)})")
    report = task.report_lines(config, run.splits, summary)
    report += run_outputs.shared_report_lines(summary) + notes + export_lines
    table = task.prediction_table(test_outputs, test_batches)
    pause_point("report", run.interrupt)
    if is_writer():
        run_outputs.write_outputs(run.workdir, summary, table, report)
    for line in export_lines:
        run.console.line(line)
    test_scalars = run_outputs.numbers_only(summary.test)
    run.writer.write_scalars(step, {f"test/{k}": v for k, v in test_scalars.items()})
    run.writer.write_hparams(config_lib.flatten(config), run_outputs.hparam_metrics(summary))
    run.writer.close()
    run.checkpoints.close()
    report_path = os.path.join(run.workdir, "report.txt")
    run.console.line(f"done in {train_seconds:.0f} s; report: {report_path}")
    return summary


def tested_weights(run: Run) -> tuple[Any, int, list[str]]:
    """`(state, epoch, warnings)`: the best checkpoint's weights, else the last ones.

    The best save must hold the epoch the best record names; when `best/` lacks it or does
    not restore, the same step in `latest/` is used, and failing that the last weights, with
    a warning line (also in the report) instead of a wrong best epoch.
    """
    step = expected_best_step(run)
    last = (run.state, run.epoch, [])
    if step is None:
        return last
    problem = "is missing"
    try:
        restored = run.checkpoints.restore_best(run.state)
    except Exception as error:  # Orbax, tensorstore and JSON fail in many types.
        restored, problem = None, f"does not restore ({describe_error(error)})"
    if restored is not None and restored[1].get("epoch") == run.best.best_epoch:
        return restored[0], run.best.best_epoch, []
    if restored is not None:
        problem = f"holds epoch {restored[1].get('epoch')}"
    best = f"checkpoints/best (epoch {run.best.best_epoch}, step {step})"
    if step in committed_steps(run.checkpoints.latest_dir):
        state, _ = run.checkpoints.restore_latest_step(step, run.state)
        return state, run.best.best_epoch, [f"warning: {best} {problem}; tested latest/{step}"]
    note = (
        f"warning: {best} {problem} and latest/ no longer holds it; tested the last weights "
        f"(epoch {last[1]}) instead"
    )
    return run.state, last[1], [note]


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
