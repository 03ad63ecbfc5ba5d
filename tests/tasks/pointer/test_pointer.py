"""The pointer package as the harness sees it: its `TASK` and end-to-end `small` runs."""

import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from jaxguard import config as config_lib
from jaxguard import trainer
from jaxguard.tasks import get_task
from jaxguard.tasks.contract import Task
from jaxguard.tasks.pointer import (
    TASK,
    checks,
    coords,
    guards,
    loss,
    metrics,
    model,
    report,
    splits,
)
from jaxguard.writers import Console

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "pointer.py:small")
METRIC_KEYS = (
    "pixel_error_mean",
    "pixel_error_median",
    "pixel_error_p90",
    "done_precision",
    "done_recall",
    "done_f1",
    "done_prob_std",
)


# ----------------------------------------------------------------------------- the contract


def test_the_registry_returns_the_package_s_task():
    assert isinstance(TASK, Task) and get_task("pointer") is TASK and TASK.name == "pointer"


def test_hooks_come_from_the_modules_by_concern():
    assert TASK.check_config is checks.check_config
    assert TASK.make_splits is splits.make_splits
    assert (TASK.make_model, TASK.forward, TASK.head) == (
        model.make_model,
        model.forward,
        model.head,
    )
    assert (TASK.make_loss, TASK.loss_inputs) == (loss.make_loss, loss.loss_inputs)
    assert (TASK.empty_metrics, TASK.update_metrics) == (
        metrics.empty_metrics,
        metrics.update_metrics,
    )
    assert TASK.make_guards is guards.make_guards
    for hook in ("histograms", "prediction_table", "report_lines", "audit", "startup_lines"):
        assert getattr(TASK, hook) is getattr(report, hook)
    assert TASK.images is report.images
    assert TASK.pretrain is None and TASK.collapse_arrays is None and TASK.export is None


def test_guard_sections_of_the_config_are_the_task_s(load_small):
    config = load_small()
    assert TASK.guard_names == ("head_gradient_band", "done_never_predicted", "lenient_threshold")
    assert set(TASK.guard_names) <= set(config.guard)


def test_epoch_line_and_diagnostics_read_computed_metrics(load_small):
    computed = set(metrics.empty_metrics(load_small()).compute())
    assert {key for _, key in TASK.epoch_line} <= computed
    assert set(TASK.diagnostic_keys) <= computed


# ----------------------------------------------------------------------------- end-to-end runs


def _events(workdir):
    """Every summary value in the run's TensorBoard files (TFRecord framing, no TensorBoard)."""
    folder = os.path.join(workdir, "tensorboard")
    values = []
    for name in sorted(n for n in os.listdir(folder) if n.startswith("events.out.tfevents")):
        data = open(os.path.join(folder, name), "rb").read()
        position = 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
            position += 16 + length  # length, its CRC, the record, its CRC
            values.extend((event.step, value) for value in event.summary.value)
    return values


@pytest.fixture(scope="session")
def pointer_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "pointer")
    config = config_lib.load_config(SMALL)
    stream = io.StringIO()
    summary = trainer.train_and_evaluate(config, workdir, console=Console(stream, progress=False))
    return config, workdir, summary, stream.getvalue()


def test_run_reports_the_pointing_metrics(pointer_run):
    config, workdir, summary, console = pointer_run
    assert set(METRIC_KEYS) <= set(summary["test"])
    table = np.genfromtxt(os.path.join(workdir, "predictions.csv"), delimiter=",", names=True)
    assert len(table) == config.data.num_test
    pointing = table["done_true"] == 0
    # The written pixel errors are the predictions' distance to the targets in 64 px images.
    pred = np.stack([table["pred_x"], table["pred_y"]], 1)
    true = np.stack([table["true_x"], table["true_y"]], 1)
    np.testing.assert_allclose(
        table["pixel_error"][pointing],
        coords.pixel_error(pred, true, (64, 64))[pointing],
        rtol=1e-4,
    )
    assert summary["test"]["pixel_error_mean"] == pytest.approx(
        table["pixel_error"][pointing].mean(), rel=1e-3
    )
    report = open(os.path.join(workdir, "report.txt")).read()
    assert f"median {summary['test']['pixel_error_median']:.2f}" in report
    assert "distance threshold 0.1 normalised (of the longer side) = 6.4 px" in console
    assert "epoch 0 head gradient norms: x_head median" in console


def test_tensorboard_holds_head_gradients_drawn_examples_and_no_non_finite_scalar(pointer_run):
    config, workdir, _, _ = pointer_run
    values = _events(workdir)
    tags = {value.tag for _, value in values}
    assert {"train/grad_norm/x_head", "train/grad_norm/y_head", "train/grad_norm/done_head"} <= tags
    images = [v.image for _, v in values if v.tag == "val_examples"]
    assert len(images) == config.train.epochs  # One figure of the first examples per epoch.
    decoded = Image.open(io.BytesIO(images[0].encoded_image_string))
    assert decoded.format == "PNG" and decoded.size == (images[0].width, images[0].height)
    assert images[0].colorspace == 3
    scalars = [v.simple_value for _, v in values if v.HasField("simple_value")]
    assert scalars and all(np.isfinite(scalars))  # NaN metrics stay in log.csv only.


def test_run_writes_its_figures_and_ranks_by_test_metrics(pointer_run):
    _, workdir, summary, console = pointer_run
    for name in ("learning_curves", "test_examples"):
        with Image.open(os.path.join(workdir, "figures", f"{name}.png")) as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert f"figures: {os.path.join(workdir, 'figures')}/ (learning_curves, test_examples)" in (
        console
    )
    hparams = {v.tag: v.simple_value for _, v in _events(workdir) if v.tag.startswith("hparam/")}
    assert hparams["hparam/test/pixel_error_median"] == pytest.approx(
        summary["test"]["pixel_error_median"]
    )
    assert "hparam/best/val_pixel_error_median" in hparams
    assert os.listdir(os.path.join(workdir, "tensorboard")) == [
        n for n in os.listdir(os.path.join(workdir, "tensorboard")) if n.startswith("events")
    ]  # No hparams sub-folder: one TensorBoard run per training run.


def test_done_guard_warns_in_a_run_whose_done_head_never_learns(tmp_path):
    # No done loss and a zero head: every done probability is exactly 0.5, never above it.
    overrides = [
        "loss.done_weight=0",
        "model.head_init_std=0",
        "guard.done_never_predicted.patience=2",
        "train.epochs=2",
    ]
    config = config_lib.load_config(SMALL, overrides)
    stream = io.StringIO()
    summary = trainer.train_and_evaluate(
        config, str(tmp_path / "p"), console=Console(stream, progress=False)
    )
    lines = [line for line in stream.getvalue().splitlines() if "done never predicted" in line]
    assert len(lines) == 1 and lines[0].startswith("warn: done never predicted: for 2 evaluations")
    assert summary["test"]["done_recall"] == 0.0
    saved = json.load(open(tmp_path / "p" / "test_metrics.json"))
    assert saved["test"]["done_prob_max_positive"] == pytest.approx(0.5)
