"""One epoch of a run: train steps with periodic actions, evaluation, guards, checkpoint.

`Run` holds what `jaxguard.trainer.start_run` built and what the loop changes; each function
here is one stage of `trainer.train_and_evaluate`'s epoch, testable on its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from jaxguard import run_outputs
from jaxguard.batching import batch_rows, epoch_seed, place_rows, split_size
from jaxguard.checkpoints import RunCheckpoints
from jaxguard.distributed import agree_on_signal, host_tree, is_writer, local_tree
from jaxguard.guards import (
    BestCheckpoint,
    Diagnostics,
    Evaluation,
    GuardCollection,
    GuardEvent,
    StepInfo,
)
from jaxguard.optim import plateau_scale
from jaxguard.steps import TrainState, evaluate
from jaxguard.tasks.contract import Task
from jaxguard.writers import Console, CsvWriter, MultiWriter, format_value


class RunStopped(Exception):
    """Raised inside the loop when a guard stops the run; carries the guard event."""

    def __init__(self, event: GuardEvent):
        super().__init__(event.message)
        self.event = event


# Exit codes of a run stopped by a signal: 128 + the signal number, as shells report it.
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Tests only: `JAXGUARD_TEST_PAUSE_AT=<point>:<n>` pauses the n-th time `<point>` is reached.
PAUSE_ENV = "JAXGUARD_TEST_PAUSE_AT"
_pause_counts: Counter = Counter()


class Interrupt:
    """SIGTERM and SIGINT as a request to stop at the next step; a second signal exits at once.

    The first signal only records its number (`signum`): the loop finishes the step it is in,
    saves a checkpoint and raises `RunInterrupted`. A second one ends the process with
    `128 + signal` without running anything else; the committed checkpoints stay intact
    because orbax writes into a temporary folder and renames it when complete.

    With several processes, the loop asks `pending()` after every step: the processes agree
    there on the signal any of them received, so all stop at the same step and save the same
    checkpoint together, even when the signal reached only one of them. A process's own
    first signal arriving after that agreement is still a first signal, not a second.
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # The first signal this process received.
        self.agreed: int | None = None  # The signal every process stops at, once agreed.

    def pending(self) -> int | None:
        """The signal the run stops at, the same on every process; None to go on.

        A collective with several processes: every process calls it at the same points.
        """
        if self.agreed is None:
            self.agreed = agree_on_signal(self.signum)
        return self.agreed

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """Handles SIGTERM and SIGINT inside the block (main thread only), then restores."""
        previous = {signum: signal.signal(signum, self._handle) for signum in SIGNAL_EXIT_CODES}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        del frame
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum


class RunInterrupted(Exception):
    """Raised when the loop stopped at a signal; `saved` says what the last checkpoint holds."""

    def __init__(self, signum: int, saved: str):
        self.signum = signum
        self.saved = saved
        super().__init__(f"{signal.Signals(signum).name}: {saved}")

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_CODES.get(self.signum, 128 + self.signum)


def pause_point(point: str, interrupt: Interrupt) -> None:
    """For tests: pauses here when `JAXGUARD_TEST_PAUSE_AT` names this occurrence of `point`.

    Prints `JAXGUARD_TEST_PAUSED <point>:<n>` to stderr and sleeps until a signal arrives
    (SIGKILL ends it; SIGTERM/SIGINT resume the run, which then stops as on any signal). The
    points: `step` (after each train step), `save` (before a checkpoint is written),
    `between_latest_and_best` (latest committed, best not yet), `evaluate` (after each
    validation pass) and `report` (test done, outputs not yet written; `trainer.finish_run`).
    """
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    _pause_counts[point] += 1
    if wanted != f"{point}:{_pause_counts[point]}":
        return
    print(f"JAXGUARD_TEST_PAUSED {wanted}", file=sys.stderr, flush=True)
    while interrupt.signum is None:
        time.sleep(0.02)


@dataclasses.dataclass
class Run:
    """A run in progress: what `start_run` built, and what the loop changes (`state` on)."""

    config: ConfigDict
    task: Task
    workdir: str
    console: Console
    splits: Any
    graphdef: Any
    schedule: optax.Schedule
    steps_per_epoch: int
    param_count: int
    train_step: Callable
    eval_step: Callable
    # steps.make_term_gradients (each loss term's gradient share), None when log.term_gradients
    # is off.
    term_gradients: Callable | None
    empty_metrics: Any
    guards: GuardCollection
    best: BestCheckpoint | None
    checkpoints: RunCheckpoints
    writer: MultiWriter
    epoch_csv: CsvWriter
    shard: Callable  # A host batch onto the devices (`batching.place_batch`).
    batch_sharding: Any  # Training batches: split along their leading axis over every device.
    replicated: Any
    actions: tuple[PeriodicAction, ...]
    state: TrainState
    start_epoch: int = 0
    epoch: int = 0
    pretrain: dict | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # This epoch's training loss and raw loss terms so far, `{"loss" | term: sum over its
    # steps}` (device scalars, read once at the epoch's end, so no step waits for the host),
    # and the number of steps summed.
    train_sums: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_steps: int = 0
    stopped_by: GuardEvent | None = None
    interrupt: Interrupt = dataclasses.field(default_factory=Interrupt)
    saved_step: int = -1  # Step of the last checkpoint written or restored.
    resume_steps: int = 0  # Steps of `start_epoch` a mid-epoch checkpoint already trained.
    # `compile_ahead`'s compilation of the evaluation step and term gradients, until awaited.
    compiling: concurrent.futures.Future | None = None


@dataclasses.dataclass(frozen=True)
class PeriodicAction:
    """Work done every `every_steps` training steps (and at each epoch's last step if asked)."""

    name: str
    every_steps: int
    at_epoch_end: bool
    apply: Callable[
        [Run, int, int, dict[str, jax.Array], Any], None
    ]  # (run, epoch, index, measurements, the sharded batch just trained on)

    def should_trigger(self, step: int, last_in_epoch: bool) -> bool:
        return step % self.every_steps == 0 or (self.at_epoch_end and last_in_epoch)


def periodic_actions(config: ConfigDict, diag_batch) -> tuple[PeriodicAction, ...]:
    """Logging done between train steps, in this order."""
    return (
        PeriodicAction("train_scalars", config.log.every_steps, True, log_train_scalars),
        PeriodicAction(
            "diagnostics",
            config.log.diagnostics_every_steps,
            False,
            lambda run, epoch, index, measurements, batch: write_diagnostics(
                run, epoch, diag_batch, batch
            ),
        ),
    )


def abstract_tree(tree):
    """`tree` with each array replaced by its shape, dtype and sharding (nothing to donate)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=x.sharding, weak_type=x.aval.weak_type
        ),
        tree,
    )


def compile_ahead(run: Run, diag_batch) -> concurrent.futures.Future:
    """Compiles the evaluation step and the term gradients on a second thread; the future.

    Started before the first train step, so these compile while the train step compiles and
    the first steps run (XLA compiles each program on one core; on 2 cores the optical-depth
    model's first diagnostics no longer wait 4 s for theirs). Compiling fills JAX's caches,
    so the loop's later calls with the same shapes only retrace. The state is abstract
    (`abstract_tree`): the first train step donates its buffers while this thread may still
    be lowering. The loop waits for the future before its first evaluation or diagnostics
    (`await_compiled`), so nothing compiles twice, and an error raised here is raised there.
    """
    state = abstract_tree(run.state)
    eval_batch = run.shard(diag_batch)  # The first validation batch: its shape is every full one's.
    rows = next(
        batch_rows(split_size(run.splits["train"]), run.config.train.batch_size, drop_last=True)
    )
    train_batch = place_rows(run.splits["train"], rows, run.batch_sharding)

    def compile_all() -> None:
        run.eval_step.lower(state, run.empty_metrics, eval_batch).compile()
        if run.term_gradients is not None:
            run.term_gradients.lower(state, train_batch).compile()

    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxguard-compile")
    future = executor.submit(compile_all)
    executor.shutdown(wait=False)
    return future


def await_compiled(run: Run) -> None:
    """Waits for `compile_ahead`'s compilation, once; re-raises its error."""
    if run.compiling is not None:
        compiling, run.compiling = run.compiling, None
        compiling.result()


def epoch_means_keys(measurements: dict) -> dict[str, str]:
    """`{epoch key: measurement}`: the loss and each raw loss term (`loss/<term>`)."""
    keys = {"loss": "loss"}
    for key in measurements:
        term = key.removeprefix("loss/")
        if term != key and "/" not in term:
            keys[term] = key
    return keys


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One epoch of train steps with the periodic actions; returns the epoch's means over all
    its steps of the training loss (`"loss"`) and of each raw loss term (`"<term>"`); NaN with
    no step.

    A resumed run skips the steps its mid-epoch checkpoint already trained. At a signal
    (`run.interrupt`), the epoch stops after the current step: unless it was the epoch's
    last, a mid-epoch checkpoint is saved and `RunInterrupted` raised.
    """
    done = run.resume_steps if epoch == run.start_epoch else 0
    if not done:
        run.train_sums, run.train_steps = {}, 0
    split = run.splits["train"]
    batches = batch_rows(
        split_size(split),
        run.config.train.batch_size,
        seed=epoch_seed(run.config, epoch),
        drop_last=True,
    )
    steps = run.steps_per_epoch
    summed = None  # The keys to sum, read from the first step's measurements.
    for index, rows in itertools.islice(enumerate(batches), done, steps):
        sharded = place_rows(split, rows, run.batch_sharding)
        run.state, measurements = run.train_step(run.state, sharded)
        summed = summed or epoch_means_keys(measurements)
        for name, key in summed.items():
            run.train_sums[name] = run.train_sums.get(name, 0.0) + measurements[key]
        run.train_steps += 1
        step = int(run.state.step)
        for action in run.actions:
            if action.should_trigger(step, index == steps - 1):
                action.apply(run, epoch, index, measurements, sharded)
        pause_point("step", run.interrupt)
        if run.interrupt.pending() is not None and index < steps - 1:
            save_checkpoint(run, epoch, False, in_epoch={"steps": index + 1})
            raise_interrupted(run)
    if not run.train_steps:
        return {"loss": math.nan}
    return {name: float(total) / run.train_steps for name, total in run.train_sums.items()}


def raise_interrupted(run: Run) -> None:
    """Raises `RunInterrupted` for the pending signal, naming the checkpoint to resume from."""
    if run.saved_step < 0:
        saved = "no checkpoint yet: the run starts from scratch"
    else:
        saved = f"checkpoint at step {run.saved_step} (epoch {run.epoch})"
    raise RunInterrupted(run.interrupt.pending(), saved)


def report_events(run: Run, events: list[GuardEvent], step: int) -> GuardEvent | None:
    """Records guard events in `guard_events.jsonl`, prints the others; returns the first stop."""
    stop = None
    for event in events:
        if is_writer():
            run_outputs.append_event(run.workdir, event, step)
        if event.level == "stop":
            stop = stop or event
        else:
            run.console.line(f"{event.level}: {event.message}")
    return stop


def log_train_scalars(run: Run, epoch: int, index: int, measurements, batch) -> None:
    """Train-step measurements to TensorBoard, the step guards, the progress bar."""
    del batch
    step = int(run.state.step)
    scalars = {key: float(value) for key, value in measurements.items()}
    run.writer.write_scalars(step, {f"train/{key}": value for key, value in scalars.items()})
    stop = report_events(run, run.guards.on_step(StepInfo(step, epoch, scalars)), step)
    if stop is not None:
        raise RunStopped(stop)
    run.console.progress(
        epoch, index + 1, run.steps_per_epoch, scalars["loss"], epochs=run.config.train.epochs
    )


def write_diagnostics(run: Run, epoch: int, val_batch, train_batch) -> None:
    """Figures between evaluations, logged and shown to the guards' `on_diagnostics`.

    The task's metrics on one fixed validation batch (`diag/<key>` for its diagnostic keys),
    the output layer's weight norm, and each loss term's raw value and share of the gradient
    on the training batch just used (`terms/<t>/value`, `terms/<t>/grad_share`).
    """
    step = int(run.state.step)
    await_compiled(run)
    metrics, outputs, _ = run.eval_step(run.state, run.empty_metrics, run.shard(val_batch))
    computed = run_outputs.numbers_only(local_tree(metrics).compute())
    scalars = {f"diag/{key}": computed[key] for key in run.task.diagnostic_keys}
    model = nnx.merge(run.graphdef, run.state.params, run.state.model_state)
    head = nnx.to_pure_dict(nnx.state(run.task.head(model), nnx.Param))
    scalars["diag/head_weight_norm"] = float(optax.tree.norm(head))
    terms = {}
    if run.term_gradients is not None:
        measured = run.term_gradients(run.state, train_batch)
        terms = {key: float(value) for key, value in measured.items()}
    run.writer.write_scalars(step, {**scalars, **terms})
    if run.writer.writes:
        run.writer.write_histograms(step, run.task.histograms(host_tree(outputs), val_batch))
    diagnostics = Diagnostics(step, epoch, {**computed, **terms})
    stop = report_events(run, run.guards.on_diagnostics(diagnostics), step)
    if stop is not None:
        raise RunStopped(stop)


def evaluate_epoch(run: Run):
    """Evaluates the validation split and logs it; returns `(metrics, outputs, batches)`."""
    config, task = run.config, run.task
    await_compiled(run)
    val, outputs, batches = evaluate(
        run.eval_step,
        run.state,
        run.splits["val"],
        run.empty_metrics,
        config.eval.batch_size,
        run.shard,
    )
    pause_point("evaluate", run.interrupt)
    # Placed like the rest of the state: an uncommitted array would recompile the step.
    plateau_value = jax.device_put(jnp.asarray(val["loss"], jnp.float32), run.replicated)
    run.state = run.state.replace(plateau_value=plateau_value)
    step = int(run.state.step)
    run.writer.write_scalars(
        step, {f"val/{k}": v for k, v in run_outputs.numbers_only(val).items()}
    )
    if run.writer.writes:
        run.writer.write_histograms(step, task.histograms(outputs, batches))
        run.writer.write_histograms(step, weight_histograms(run.state.params))
        if task.images is not None:
            # Drawn while the next epoch trains (`MultiWriter.draw_images`).
            run.writer.draw_images(step, lambda: task.images(outputs, batches))
    return val, outputs, batches


def consult_guards(run: Run, epoch: int, val: dict, train: dict[str, float]):
    """Evaluation guards, best checkpoint, history and logs; returns `(is_best, stop event)`.

    `train` holds the epoch's means over all its steps (`train_epoch`): the guards get its
    `"loss"` as `train_loss`; the history and `log.csv` get every entry as `train_<name>`."""
    metrics = {**val, "train_loss": train["loss"]}
    events = run.guards.on_evaluation(Evaluation(epoch, metrics))
    stop = report_events(run, events, int(run.state.step))
    is_best = run.best is not None and run.best.update(epoch, metrics)
    numbers = run_outputs.numbers_only(val)
    record = {
        "epoch": epoch,
        **{f"train_{k}": v for k, v in train.items()},
        **{f"val_{k}": v for k, v in numbers.items()},
    }
    run.history.append(record)
    step = int(run.state.step)
    change = run_outputs.relative_change([h["val_loss"] for h in run.history])
    if math.isfinite(change):
        run.writer.write_scalars(step, {"val/loss_change": change})
    lr = float(run.schedule(step - 1) * plateau_scale(run.state.opt_state))
    run.epoch_csv.write_scalars(step, {**record, "val_loss_change": change, "lr": lr})
    run.console.line(epoch_line(run, record, val))
    return is_best, stop


def epoch_line(run: Run, record: dict, val: dict) -> str:
    parts = [
        f"epoch {record['epoch']}",
        f"loss {format_value(record['train_loss'])}",
        f"val loss {format_value(val['loss'])}",
    ]
    parts += [f"{label} {format_value(val[key])}" for label, key in run.task.epoch_line]
    if run.best is not None and run.best.best_epoch is not None:
        parts.append(
            f"best {run.best.monitor.source} {format_value(run.best.best_value)} "
            f"@ {run.best.best_epoch}"
        )
    return " | ".join(parts)


def save_checkpoint(
    run: Run,
    epoch: int,
    is_best: bool,
    *,
    in_epoch: dict | None = None,
    stop: GuardEvent | None = None,
) -> None:
    """Saves `latest/` (and then `best/` when `is_best`) with the host-side state as meta.

    `in_epoch` (`{"steps": k}`) marks a mid-epoch save after k steps of `epoch`, with the
    epoch's training sums so far; `stop` records the guard that ended the run, so that resuming
    a stopped run finishes it instead of training on. `latest/` goes first: a crash
    between the two saves is repaired on resume (`trainer.repair_best`).
    """
    meta = {"epoch": epoch, "history": run.history, "guards": run.guards.state_dict()}
    meta["best"] = run.best.state_dict() if run.best is not None else None
    if in_epoch is not None:
        meta["in_epoch"] = {
            **in_epoch,
            "train_sums": {name: float(total) for name, total in run.train_sums.items()},
            "train_steps": run.train_steps,
        }
    if stop is not None:
        meta["stopped_by"] = dataclasses.asdict(stop)
    step = int(run.state.step)
    pause_point("save", run.interrupt)
    run.checkpoints.save_latest(step, run.state, meta)
    if is_best:
        pause_point("between_latest_and_best", run.interrupt)
        run.checkpoints.save_best(step, run.state, meta)
    run.saved_step = step
    run.writer.flush()


def weight_histograms(params: nnx.State) -> dict[str, np.ndarray]:
    flat = jax.tree.leaves_with_path(nnx.to_pure_dict(params))
    return {
        "weights/" + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(value)
        for path, value in flat
    }
