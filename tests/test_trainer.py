"""The harness's stages one at a time, on the toy task of docs/adding_a_task.md."""

import csv
import dataclasses
import io
import json
import os
import signal

import jax
import numpy as np
import pytest
import toy_task

from jaxguard import config as config_lib
from jaxguard import guards, loop, trainer
from jaxguard.writers import Console

TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_config.py")


@pytest.fixture(scope="module")
def toy_config():
    return config_lib.load_config(TOY)


def start(config, workdir, *, resume=False):
    stream = io.StringIO()
    run = trainer.start_run(
        config, toy_task.TASK, str(workdir), Console(stream, progress=False), resume=resume
    )
    return run, stream


def test_periodic_action_triggers_every_n_steps_and_at_epoch_end_when_asked():
    every_4 = loop.PeriodicAction("a", 4, False, lambda *args: None)
    with_end = loop.PeriodicAction("b", 4, True, lambda *args: None)
    assert [s for s in range(1, 10) if every_4.should_trigger(s, False)] == [4, 8]
    assert with_end.should_trigger(5, True) and not every_4.should_trigger(5, True)


def test_prepare_workdir_refuses_to_overwrite_or_to_resume_nothing(toy_config, tmp_path):
    console = Console(io.StringIO(), progress=False)
    with pytest.raises(config_lib.ConfigError, match="--resume: no checkpoint"):
        trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=True, console=console)
    trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=False, console=console)
    assert (tmp_path / "new" / "config.json").exists()
    os.makedirs(tmp_path / "new" / "checkpoints" / "latest" / "8")  # A committed step.
    with pytest.raises(config_lib.ConfigError, match="already holds a run"):
        trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=False, console=console)


@pytest.mark.parametrize("resume", [False, True])
def test_a_workdir_without_a_committed_checkpoint_starts_from_scratch(toy_config, tmp_path, resume):
    # Killed before its first save: orbax made latest/, the attempt left its logs.
    os.makedirs(tmp_path / "checkpoints" / "latest" / "8.orbax-checkpoint-tmp-1")
    os.makedirs(tmp_path / "tensorboard")
    (tmp_path / "log.csv").write_text("step,epoch\n8,0\n")
    stream = io.StringIO()
    has_checkpoint = trainer.prepare_workdir(
        toy_config, str(tmp_path), resume=resume, console=Console(stream, progress=False)
    )
    assert not has_checkpoint
    assert "no committed checkpoint" in stream.getvalue() and "from scratch" in stream.getvalue()
    assert not (tmp_path / "log.csv").exists() and not (tmp_path / "tensorboard").exists()


def test_resume_with_an_allowed_change_keeps_the_old_config(toy_config, tmp_path):
    console = Console(io.StringIO(), progress=False)
    trainer.prepare_workdir(toy_config, str(tmp_path), resume=False, console=console)
    os.makedirs(tmp_path / "checkpoints" / "latest" / "8")
    changed = config_lib.load_config(TOY, ["optim.lr=0.01", "train.epochs=7"])
    stream = io.StringIO()
    trainer.prepare_workdir(changed, str(tmp_path), resume=True, console=Console(stream))
    assert "optim.lr 0.05 -> 0.01" in stream.getvalue()
    assert "train.epochs 5 -> 7" in stream.getvalue()
    assert json.loads((tmp_path / "config.1.json").read_text())["optim"]["lr"] == 0.05
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.01
    refused = config_lib.load_config(TOY, ["seed=3"])
    with pytest.raises(config_lib.ConfigError, match="seed 0 -> 3 cannot change on resume"):
        trainer.prepare_workdir(refused, str(tmp_path), resume=True, console=console)


def make_guards(config):
    loss_fn = toy_task.TASK.make_loss(config, None, 8)
    return trainer.make_guards(config, toy_task.TASK, None, loss_fn, 8)


def test_make_guards_orders_the_task_guard_before_early_stopping(toy_config):
    collection, best = make_guards(toy_config)
    assert collection.names == (
        "nonfinite",
        "loss_terms",
        "gap",
        "volatility",
        "overfitting",
        "early_stopping",
    )
    assert best.monitor.source == toy_config.guard.early_stopping.monitor


def test_make_guards_names_the_guard_whose_metric_the_task_lacks(toy_config):
    config = config_lib.load_config(TOY, ["guard.early_stopping.monitor=loss - r22"])
    with pytest.raises(config_lib.ConfigError, match=r"guard.early_stopping: .*'r22'.*'r2'"):
        make_guards(config)
    config = config_lib.load_config(TOY, ["guard.best.monitor=rmsee"])
    with pytest.raises(config_lib.ConfigError, match=r"guard.best: .*'rmsee'.*'rmse'"):
        make_guards(config)


def test_one_epoch_stage_by_stage(toy_config, tmp_path):
    run, stream = start(toy_config, tmp_path / "run")
    # Log every step's scalars, to compare the epoch's means with all 8 steps' values (the
    # config logs every 20 steps and at the epoch's last: the epoch loss must not be that one).
    run.actions = (dataclasses.replace(run.actions[0], every_steps=1), *run.actions[1:])
    logged = {"train/loss": [], "train/loss/mse": []}
    write_scalars = run.writer.write_scalars

    def spy(step, scalars):
        for key, values in logged.items():
            values.extend(v for k, v in scalars.items() if k == key)
        write_scalars(step, scalars)

    run.writer.write_scalars = spy
    train = loop.train_epoch(run, 0)
    assert run.steps_per_epoch == 8 and int(run.state.step) == 8
    assert set(train) == {"loss", "mse"} and len(logged["train/loss"]) == 8
    assert train["loss"] == pytest.approx(np.mean(logged["train/loss"]), rel=1e-6)
    assert train["mse"] == pytest.approx(np.mean(logged["train/loss/mse"]), rel=1e-6)
    assert train["loss"] != pytest.approx(logged["train/loss"][-1], rel=1e-3)
    val, outputs, batches = loop.evaluate_epoch(run)
    assert outputs["pred"].shape == (64,) and batches["x"].shape == (64, 4)
    assert float(run.state.plateau_value) == pytest.approx(val["loss"])
    is_best, stop = loop.consult_guards(run, 0, val, train)
    assert is_best and stop is None and run.best.best_epoch == 0
    assert run.history[0]["val_r2"] == pytest.approx(val["r2"])
    assert run.history[0]["train_mse"] == train["mse"]
    assert stream.getvalue().splitlines()[-1].startswith("epoch 0 | loss ")
    loop.save_checkpoint(run, 0, is_best)
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0"] and float(rows[0]["val_loss"]) == val["loss"]
    summary = trainer.finish_run(run, train_seconds=1.0)
    assert summary.best_epoch == 0 and summary.epochs_run == 1
    assert summary.test["r2"] == pytest.approx(
        float(open(tmp_path / "run" / "report.txt").read().split()[2]), abs=1e-4
    )


def test_a_stop_from_a_step_guard_ends_the_epoch_at_that_step(toy_config, tmp_path):
    class StopAtStep3(guards.Guard):
        name = "stop3"

        def on_step(self, info):
            if info.step >= 3:
                return guards.GuardEvent(self.name, "stop", "enough", step=info.step)
            return None

    config = config_lib.load_config(TOY, ["log.every_steps=1"])
    run, _ = start(config, tmp_path / "run")
    run.guards = guards.GuardCollection([*run.guards.guards, StopAtStep3()])
    with pytest.raises(loop.RunStopped, match="enough"):
        loop.train_epoch(run, 0)
    assert int(run.state.step) == 3


def test_resume_restores_epoch_history_guards_and_best(toy_config, tmp_path):
    workdir = tmp_path / "run"
    first = trainer.train_and_evaluate(
        toy_config, str(workdir), console=Console(io.StringIO(), progress=False)
    )
    run, stream = start(toy_config, workdir, resume=True)
    assert run.start_epoch == toy_config.train.epochs
    assert len(run.history) == first["epochs_run"]
    assert run.best.best_epoch == first["best_epoch"]
    assert run.guards["early_stopping"].best_epoch == first["best_epoch"]
    assert "resumed from epoch 4" in stream.getvalue()


def test_resuming_a_run_a_guard_stopped_finishes_it_without_training_on(tmp_path):
    config = config_lib.load_config(TOY, ["guard.early_stopping.stopping_threshold=0.6"])
    quiet = Console(io.StringIO(), progress=False)
    first = trainer.train_and_evaluate(config, str(tmp_path / "run"), console=quiet)
    assert first["stopped_by"]["guard"] == "early_stopping" and first["epochs_run"] == 2
    again = trainer.train_and_evaluate(config, str(tmp_path / "run"), resume=True, console=quiet)
    assert again["epochs_run"] == 2 and again["stopped_by"] == first["stopped_by"]
    assert again["test"] == first["test"] and again["best_epoch"] == first["best_epoch"]


def test_interrupt_records_the_first_signal_and_exits_at_the_second(monkeypatch):
    exits = []
    monkeypatch.setattr(loop.os, "_exit", exits.append)
    before = signal.getsignal(signal.SIGTERM)
    interrupt = loop.Interrupt()
    with interrupt.installed():
        signal.raise_signal(signal.SIGTERM)
        assert interrupt.signum == signal.SIGTERM and exits == []
        signal.raise_signal(signal.SIGINT)
    assert exits == [128 + signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) == before
    assert loop.RunInterrupted(signal.SIGTERM, "saved").exit_code == 143
    assert loop.RunInterrupted(signal.SIGINT, "saved").exit_code == 130


def test_without_tensorboard_no_event_file_and_no_histograms_drawn(tmp_path, monkeypatch):
    def not_drawn(*args):
        raise AssertionError("histograms drawn for a run without TensorBoard")

    monkeypatch.setattr(loop, "weight_histograms", not_drawn)
    config = config_lib.load_config(TOY, ["log.tensorboard=False", "train.epochs=2"])
    workdir = tmp_path / "run"
    summary = trainer.train_and_evaluate(
        config, str(workdir), console=Console(io.StringIO(), progress=False)
    )
    events = [name for _, _, names in os.walk(workdir) for name in names if "tfevents" in name]
    assert events == []
    with open(workdir / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert summary["epochs_run"] == 2
    assert (workdir / "figures" / "learning_curves.png").exists()


def test_the_eval_step_and_term_gradients_compiled_ahead_compile_nothing_in_the_loop(
    toy_config, tmp_path
):
    config = config_lib.load_config(TOY, ["log.term_gradients=True"])
    run, _ = start(config, tmp_path / "run")
    run.compiling.result()  # Compiled on the other thread, against the abstract state.
    compiled = []

    def listener(event, seconds, fun_name="", **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        loop.train_epoch(run, 0)
        diagnostics = next(a for a in run.actions if a.name == "diagnostics")
        train_batch = loop.place_rows(run.splits["train"], np.arange(32), run.batch_sharding)
        diagnostics.apply(run, 0, 7, {}, train_batch)  # The first validation batch's shape.
        loop.evaluate_epoch(run)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert run.compiling is None and "jit(train_step)" in compiled
    assert not {"jit(eval_step)", "jit(term_gradients)"} & set(compiled)
