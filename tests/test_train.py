"""End-to-end runs of the harness on the optical-depth task with the `small` variant."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard import train, trainer

SMALL = "configs/optical_depth.py:small"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One uninterrupted small run, shared by the tests that inspect its outputs."""
    workdir = str(tmp_path_factory.mktemp("run") / "od")
    config = config_lib.load_config(os.path.join(ROOT, SMALL))
    summary = trainer.train_and_evaluate(config, workdir)
    return config, workdir, summary


def test_run_writes_events_csv_checkpoints_and_report(finished_run):
    config, workdir, summary = finished_run
    files = set(os.listdir(workdir))
    assert {"config.json", "log.csv", "test_metrics.json", "predictions.csv", "report.txt"} <= files
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert os.listdir(os.path.join(workdir, "checkpoints", "latest"))
    assert os.listdir(os.path.join(workdir, "checkpoints", "best"))
    with open(os.path.join(workdir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(config.train.epochs))
    assert {"val_r2", "val_std_ratio", "val_pred_std", "train_loss", "lr"} <= set(rows[0])
    predictions = np.loadtxt(os.path.join(workdir, "predictions.csv"), delimiter=",", skiprows=1)
    assert predictions.shape == (config.data.num_test, 3)
    # The report's test R² is the one recomputed from the written predictions.
    true, pred = predictions[:, 0], predictions[:, 1]
    r2 = 1 - np.sum((true - pred) ** 2) / np.sum((true - true.mean()) ** 2)
    assert summary["test"]["r2"] == pytest.approx(r2, abs=1e-4)
    report = open(os.path.join(workdir, "report.txt")).read()
    assert "oracle" in report and f"{summary['test']['r2']:.4f}" in report
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["task"] == "optical_depth" and saved["optim"]["lr"] == config.optim.lr


def test_best_checkpoint_is_the_best_r2_epoch(finished_run):
    _, workdir, summary = finished_run
    with open(os.path.join(workdir, "log.csv")) as f:
        r2 = [float(r["val_r2"]) for r in csv.DictReader(f)]
    assert summary["best_epoch"] == int(np.argmax(r2))


def test_interrupted_run_resumes_to_the_same_result(finished_run, tmp_path):
    config, _, uninterrupted = finished_run
    workdir = str(tmp_path / "od")

    def crash_after_epoch_1(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(config, workdir, on_epoch_end=crash_after_epoch_1)
    assert not os.path.exists(os.path.join(workdir, "test_metrics.json"))
    with pytest.raises(config_lib.ConfigError, match="already holds a run; pass --resume"):
        trainer.train_and_evaluate(config, workdir)
    resumed = trainer.train_and_evaluate(config, workdir, resume=True)
    assert resumed["epochs_run"] == config.train.epochs
    for key in ("r2", "mae", "std_ratio"):
        assert resumed["test"][key] == pytest.approx(uninterrupted["test"][key], rel=1e-5)
    with open(os.path.join(workdir, "log.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(config.train.epochs))


def test_collapse_guard_stops_a_constant_model(tmp_path):
    # A zero head kernel and a negligible learning rate: the model predicts its bias.
    overrides = [
        "model.head_init_std=0.0",
        "optim.lr=1e-9",
        "guard.collapse.start_epoch=0",
        "guard.collapse.patience=2",
        "guard.early_stopping.patience=10",
    ]
    config = config_lib.load_config(os.path.join(ROOT, SMALL), overrides)
    summary = trainer.train_and_evaluate(config, str(tmp_path / "od"))
    assert summary["stopped_by"]["guard"] == "collapse"
    # Stopped on the diagnostics cadence (every 8 steps, 16 per epoch) at the second check
    # below stop_below, inside epoch 0, before any evaluation.
    assert summary["stopped_by"]["message"].startswith("variance collapse inside epoch 0 (step 16)")
    assert summary["epochs_run"] == 0
    dump = json.load(open(tmp_path / "od" / "collapse_diagnostics.json"))
    assert dump["std_ratio"] < 0.1 and "variance collapse" in dump["message"]


def test_collapse_guard_quiet_on_a_healthy_run(finished_run):
    _, _, summary = finished_run
    assert summary["stopped_by"] is None
    assert summary["test"]["std_ratio"] > 0.5


def test_config_typo_exits_2_with_the_key_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config_lib.exit_on_config_error(train.main, ["--cfg", SMALL, "--cfg.optim.lrr=3e-4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "optim.lrr" in err and "optim.lr" in err and "\n" not in err


def test_incomplete_process_flags_exit_2_with_one_line_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--cfg", SMALL, "--num_processes", "2", "--coordinator_address", "h:1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --coordinator_address, --num_processes and --process_id go together; "
        "missing --process_id\n"
    )


def test_cli_typo_exit_code_without_traceback():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxguard.train",
            "--cfg",
            "cfgs/optical_depth.py:small",
            "--cfg.train.epocs=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "train.epocs" in result.stderr and "Traceback" not in result.stderr


def test_nonfinite_guard_stops_after_consecutive_skipped_updates(tmp_path):
    # A learning rate of 1e30 sends the parameters to infinity after one update; every later
    # loss is non-finite, its update is skipped, and the guard stops the run.
    overrides = [
        "optim.lr=1e30",
        "optim.clip_norm=0.0",
        "guard.nonfinite.max_consecutive=3",
        "guard.collapse.enabled=False",
    ]
    config = config_lib.load_config(os.path.join(ROOT, SMALL), overrides)
    summary = trainer.train_and_evaluate(config, str(tmp_path / "od"))
    stop = summary["stopped_by"]
    assert stop["guard"] == "nonfinite"
    assert "in a row" in stop["message"] and "loss" in stop["message"]
    assert summary["epochs_run"] == 0


def test_compare_marks_the_best_run(finished_run, tmp_path, capsys):
    from jaxguard import compare

    _, workdir, summary = finished_run
    worse = tmp_path / "collapsed"
    worse.mkdir()
    better_mae = round(0.8 * summary["test"]["mae"], 3)
    collapsed = dict(summary["test"], r2=-0.2, mae=better_mae, std_ratio=0.034)
    (worse / "test_metrics.json").write_text(json.dumps({"test": collapsed}))
    markdown = tmp_path / "table.md"
    assert compare.main([workdir, str(worse), "--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    row = {line.split()[0]: line for line in out.splitlines()[1:3]}
    assert f"{summary['test']['r2']:.4g}*" in row["od"]
    assert f"{better_mae:.4g}*" in row["collapsed"]  # a collapsed run can win on MAE (seed 000)
    assert "0.034" in row["collapsed"] and "0.034*" not in row["collapsed"]
    assert markdown.read_text().startswith("| run | R² | MAE |")
    assert compare.main([str(tmp_path / "missing")]) == 2


def test_pretraining_reconstructs_frames_and_stops_on_patience():
    from flax import nnx

    from jaxguard.tasks.optical_depth import TASK as task

    config = config_lib.load_config(
        os.path.join(ROOT, SMALL), ["model.pretrain.epochs=3", "model.pretrain.patience=1"]
    )
    splits = task.make_splits(config)
    model = task.make_model(config, splits, nnx.Rngs(0, dropout=1))
    before = nnx.to_pure_dict(nnx.state(model.encoder))
    lines = []
    summary = task.pretrain(config, model, splits, lines.append)
    assert 1 <= summary["epochs"] <= 3 and summary["best_epoch"] < summary["epochs"]
    assert len([line for line in lines if line.startswith("pretrain epoch")]) == summary["epochs"]
    after = nnx.to_pure_dict(nnx.state(model.encoder))
    pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    assert any(not np.allclose(a, b) for a, b in pairs)


def test_restore_model_reproduces_the_written_predictions(finished_run):
    import jax.numpy as jnp

    config, workdir, _ = finished_run
    restored_config, model, splits = trainer.restore_model(workdir)
    assert restored_config.to_dict() == json.load(open(os.path.join(workdir, "config.json")))
    pred = np.asarray(model(jnp.asarray(splits["test"]["frames"])))
    written = np.loadtxt(os.path.join(workdir, "predictions.csv"), delimiter=",", skiprows=1)
    np.testing.assert_allclose(pred, written[:, 1], rtol=1e-4, atol=1e-5)
    with pytest.raises(config_lib.ConfigError, match="no config.json"):
        trainer.restore_model(os.path.dirname(workdir))
