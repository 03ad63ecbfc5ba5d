"""What the pointer task prints and writes (`jaxguard/tasks/pointer/report.py`)."""

import math

import numpy as np
import pytest

from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.pointer import report


def test_startup_lines_give_the_threshold_in_both_units(small, load_small):
    _, splits = small
    config = load_small("loss.threshold=6.4", "loss.threshold_units=pixels")
    lines = report.startup_lines(config, splits)
    assert any(
        "threshold 0.1 normalised (of the longer side) = 6.4 px on 64 x 64" in line
        for line in lines
    )
    assert "first-epoch head gradient band (1e-05, 100.0) (heads x_head, y_head, done_head)" in (
        lines
    )
    off = report.startup_lines(load_small("guard.head_gradient_band.enabled=False"), splits)
    assert not any("head gradient band" in line for line in off)


def test_report_lines_are_the_task_s_own(small):
    config, splits = small
    test = {
        "pixel_error_count": 36.0,
        "pixel_error_mean": 18.6,
        "pixel_error_median": 17.9,
        "pixel_error_p90": 29.5,
        "done_precision": 0.25,
        "done_recall": 1.0,
        "done_f1": 0.4,
        "done_prob_mean": 0.507,
        "done_prob_std": 0.0032,
        "done_prob_max_positive": 0.511,
    }
    summary = RunSummary(
        workdir="/runs/p",
        task="pointer",
        stopped_by=None,
        best_epoch=2,
        best_monitor="loss",
        epochs_run=3,
        steps_per_epoch=6,
        train_seconds=12.0,
        param_count=1708,
        pretrain=None,
        test=test,
        history=(),
    )
    lines = report.report_lines(config, splits, summary)
    assert lines[0] == "pointer, data embedded generator (seed 0), workdir /runs/p"
    assert "median 17.90" in lines[2] and "F1 0.400" in lines[3]
    # The harness writes the shared lines (best epoch, stop reason, timings).
    assert not any("best epoch" in line or "stopped by" in line for line in lines)


# ----------------------------------------------------------------------------- audit


def _hand_split(done, images, objects):
    n = len(done)
    return {
        "done": np.array(done, np.float32),
        "image_id": np.array(images),
        "num_objects": np.array(objects),
        "image": np.zeros((n, 4, 4, 1), np.uint8),
    }


def test_audit_counts_a_hand_built_dataset(load_small):
    splits = {
        "train": _hand_split(
            [1, 0, 0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [3] * 10
        ),
        "val": _hand_split([0, 0, 0, 1], [7, 8, 9, 9], [2, 4, 6, 6]),
        "test": _hand_split([0, 0, 0], [5, 5, 6], [1, 1, 1]),
    }
    result = report.audit(load_small(), splits)
    assert result["train"] == {
        "examples": 10,
        "images": 5,
        "done": 2,
        "not_done": 8,
        "done_rate": 0.2,
        "objects_per_example": 3.0,
        "balancing_pos_weight": pytest.approx(4.0),
    }
    assert result["val"]["done"] == 1 and result["val"]["images"] == 3
    assert result["val"]["balancing_pos_weight"] == pytest.approx(3.0)
    assert result["val"]["objects_per_example"] == 4.5
    assert result["test"]["done"] == 0 and math.isnan(result["test"]["balancing_pos_weight"])
    advice = "\n".join(result["recommendations"])
    assert "pos_weight = (1 - rate) / rate = 4" in advice
    assert "test has no done examples" in advice and "val has 1 done examples" in advice
    fixed = report.audit(load_small("loss.pos_weight=1"), splits)["recommendations"]
    assert any("loss.pos_weight=1 weights a done example 0.25x" in line for line in fixed)
