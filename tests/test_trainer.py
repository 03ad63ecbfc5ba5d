"""The harness's stages one at a time, on the toy task of docs/adding_a_task.md."""

import csv
import io
import os

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
    with pytest.raises(config_lib.ConfigError, match="--resume: no checkpoint"):
        trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=True)
    trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=False)
    assert (tmp_path / "new" / "config.json").exists()
    os.makedirs(tmp_path / "new" / "checkpoints" / "latest")
    with pytest.raises(config_lib.ConfigError, match="already holds a run"):
        trainer.prepare_workdir(toy_config, str(tmp_path / "new"), resume=False)


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
    losses = loop.train_epoch(run, 0)
    # 8 steps per epoch, logged every 20 steps and at the epoch's last step: one loss.
    assert run.steps_per_epoch == 8 and int(run.state.step) == 8 and len(losses) == 1
    val, outputs, batches = loop.evaluate_epoch(run)
    assert outputs["pred"].shape == (64,) and batches["x"].shape == (64, 4)
    assert float(run.state.plateau_value) == pytest.approx(val["loss"])
    is_best, stop = loop.consult_guards(run, 0, val, losses)
    assert is_best and stop is None and run.best.best_epoch == 0
    assert run.history[0]["val_r2"] == pytest.approx(val["r2"])
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
