"""The Task contract and the registry: checked at import, and complete enough for a new task."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import toy_task

from jaxguard import tasks
from jaxguard.tasks.contract import RunSummary, Task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")


def toy_hooks(**changes):
    """The toy task's fields as keyword arguments, with `changes` applied (None: left out)."""
    fields = {f.name: getattr(toy_task.TASK, f.name) for f in dataclasses.fields(Task)}
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not None}


def test_every_registered_task_exports_a_task_named_after_its_registry_entry():
    for name in tasks.TASKS:
        task = tasks.get_task(name)
        assert isinstance(task, Task) and task.name == name


def test_a_missing_required_hook_fails_naming_it():
    with pytest.raises(TypeError, match="audit"):
        Task(**toy_hooks(audit=None))


def test_a_misspelt_optional_hook_fails_naming_it():
    with pytest.raises(TypeError, match="startup_line"):
        Task(**toy_hooks(), startup_line=lambda config, splits: [])


def test_a_hook_that_is_not_callable_fails_naming_task_and_hook():
    with pytest.raises(TypeError, match=r"Task 'toy_task': hook `forward` must be callable"):
        Task(**toy_hooks(forward="forward"))


def test_epoch_line_must_hold_label_key_pairs():
    with pytest.raises(TypeError, match="epoch_line"):
        Task(**toy_hooks(epoch_line=("r2",)))


def test_optional_hooks_default_to_none_and_guards_to_none():
    bare = Task(**toy_hooks(make_guards=None))
    assert bare.startup_lines is None and bare.export is None
    assert bare.guards(config=None, splits=None) == []


def test_unknown_task_names_the_closest_registered_one():
    with pytest.raises(tasks.UnknownTaskError, match=r"'cvea' \(did you mean cvae\?\)"):
        tasks.get_task("cvea")


def test_a_module_path_without_task_is_refused():
    with pytest.raises(tasks.UnknownTaskError, match="exports no TASK"):
        tasks.get_task("jaxguard.tasks.contract")


def test_run_summary_as_dict_is_json_and_leaves_out_the_history():
    summary = RunSummary(
        workdir="w",
        task="toy_task",
        stopped_by=None,
        best_epoch=1,
        best_monitor="loss",
        epochs_run=2,
        steps_per_epoch=3,
        train_seconds=1.5,
        param_count=5,
        pretrain=None,
        test={"r2": 0.9},
        history=({"epoch": 0, "train_loss": 1.0},),
    )
    loaded = json.loads(json.dumps(summary.as_dict()))
    assert loaded["test"] == {"r2": 0.9} and "history" not in loaded


def run_toy(workdir, *overrides):
    env = {**os.environ, "PYTHONPATH": TESTS, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxguard.train",
            "--cfg",
            os.path.join(TESTS, "toy_config.py"),
            "--workdir",
            str(workdir),
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_toy_task_trains_end_to_end_through_the_cli_and_its_guard_fires_only_when_due(tmp_path):
    healthy = run_toy(tmp_path / "healthy")
    assert healthy.returncode == 0, healthy.stderr
    metrics = json.load(open(tmp_path / "healthy" / "test_metrics.json"))
    assert metrics["task"] == "toy_task" and metrics["test"]["r2"] > 0.95
    report = open(tmp_path / "healthy" / "report.txt").read()
    assert report.startswith("toy R² ") and "stopped by: the epoch budget" in report
    assert "warn:" not in healthy.stderr
    # The val loss, after the epoch, is 0.58-0.67x the epoch's mean training loss in epochs 0-2
    # while the model learns: a ratio of 0.5 must warn.
    strict = run_toy(tmp_path / "strict", "--cfg.guard.gap.ratio=0.5")
    assert strict.returncode == 0, strict.stderr
    assert "warn: val loss" in strict.stderr
    # The task's own config check runs before anything is built: exit 2, one line.
    bad = run_toy(tmp_path / "bad", "--cfg.guard.gap.ratio=-1.0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith("guard.gap.ratio must be > 0, got -1.0")
    assert not (tmp_path / "bad").exists()
