"""The end-of-run helpers: `log.csv` read back, the monitor per epoch, the learning-curve figure
and the metrics the HParams dashboard ranks runs by."""

import csv
import math

import numpy as np
import pytest

from jaxguard import run_outputs
from jaxguard.guards import GuardEvent
from jaxguard.tasks.contract import RunSummary


def _summary(workdir, **changes):
    fields = dict(
        workdir=str(workdir),
        task="toy",
        stopped_by=None,
        best_epoch=1,
        best_monitor="loss - r2",
        epochs_run=3,
        steps_per_epoch=10,
        train_seconds=1.0,
        param_count=5,
        pretrain=None,
        test={"r2": 0.75, "rank_histogram": [0.5, 0.5]},
        history=(
            {"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_r2": 0.1},
            {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_r2": 0.6},
            {"epoch": 2, "train_loss": 0.4, "val_loss": 0.5, "val_r2": 0.5},
        ),
    )
    return RunSummary(**{**fields, **changes})


def _write_log(workdir, rows):
    with open(workdir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_read_log_gives_floats_and_nan_for_empty_cells(tmp_path):
    assert run_outputs.read_log(str(tmp_path)) == []
    _write_log(tmp_path, [{"step": 10, "epoch": 0, "val_loss": 0.5, "val_loss_change": ""}])
    [row] = run_outputs.read_log(str(tmp_path))
    assert (row["step"], row["epoch"], row["val_loss"]) == (10.0, 0.0, 0.5)
    assert math.isnan(row["val_loss_change"])


def test_monitor_values_evaluate_the_expression_per_row_nan_where_a_metric_is_missing():
    rows = [{"val_loss": 0.9, "val_r2": 0.1, "train_loss": 1.0}, {"val_loss": 0.4}]
    values = run_outputs.monitor_values(rows, "val_loss - 2 * r2 + train_loss")
    assert values[0] == pytest.approx(0.9 - 0.2 + 1.0) and math.isnan(values[1])


def test_learning_curve_figure_reads_the_log_and_the_guard_events(tmp_path):
    summary = _summary(tmp_path)
    _write_log(
        tmp_path,
        [
            {
                "step": 10 * (r["epoch"] + 1),
                **r,
                "train_kl": 0.05 * (r["epoch"] + 1),
                "val_rec_loss": 0.1 * (r["epoch"] + 1),
            }
            for r in summary.history
        ],
    )
    run_outputs.append_event(str(tmp_path), GuardEvent("volatility", "warn", "jumpy", 1), 15)
    figure = run_outputs.learning_curve_figure(summary)
    losses, watched = figure.axes[:2]
    labels = losses.get_legend_handles_labels()[1]
    assert labels == [
        "train loss",
        "validation loss",
        "train kl",
        "validation rec_loss",
        "volatility (warn)",
    ]
    [kl] = [line for line in losses.get_lines() if line.get_label() == "train kl"]
    np.testing.assert_allclose(kl.get_ydata(), [0.05, 0.1, 0.15])
    [monitor] = [line for line in watched.get_lines() if line.get_label() == "loss - r2"]
    np.testing.assert_allclose(monitor.get_ydata(), [0.8, -0.2, 0.0], atol=1e-12)
    assert watched.get_title() == "monitored: loss - r2"


def test_hparam_metrics_hold_the_best_epoch_validation_and_the_numeric_test_metrics(tmp_path):
    metrics = run_outputs.hparam_metrics(_summary(tmp_path))
    assert metrics == {
        "best/val_loss": 0.4,
        "best/val_r2": 0.6,
        "test/r2": 0.75,
        "param_count": 5.0,
    }
