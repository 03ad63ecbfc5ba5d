"""The surface task as the harness sees it: its `TASK`, and a `small` run end to end."""

import csv
import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from scipy import ndimage
from tensorboardX.proto import event_pb2

from jaxguard import config as config_lib
from jaxguard import trainer
from jaxguard.tasks import get_task
from jaxguard.tasks.surface import TASK
from jaxguard.tasks.surface import loss as loss_lib
from jaxguard.tasks.surface import splits as splits_lib
from jaxguard.writers import Console

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")


def test_the_registry_holds_this_task():
    assert get_task("surface") is TASK
    assert TASK.guard_names == ("plateau", "majority_class")
    assert TASK.export is not None and TASK.make_guards is not None


@pytest.fixture(scope="session")
def surface_run(tmp_path_factory):
    """One small run, shared by the tests that inspect its outputs."""
    workdir = str(tmp_path_factory.mktemp("surface") / "run")
    config = config_lib.load_config(SMALL)
    stream = io.StringIO()
    summary = trainer.train_and_evaluate(config, workdir, console=Console(stream, progress=False))
    return config, workdir, summary, stream.getvalue()


def _scalar_steps(directory, tag):
    """Steps at which `tag` was written, read from the TensorBoard event files."""
    steps = []
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents*"), recursive=True):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            offset += 12  # length and its CRC
            event = event_pb2.Event.FromString(data[offset : offset + length])
            offset += length + 4  # payload and its CRC
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def test_run_reports_metrics_baseline_and_class_weights(surface_run):
    config, workdir, summary, console = surface_run
    assert summary["epochs_run"] == config.train.epochs
    for key in ("dice", "iou", "precision", "recall", "cldice", "fg_fraction_pred"):
        assert np.isfinite(summary["test"][key]), key
    assert "class weights (background, foreground) = (" in console
    assert "focal alpha" in console and "all-foreground baseline: dice" in console
    report = open(os.path.join(workdir, "report.txt")).read()
    assert f"test dice {summary['test']['dice']:.4f} (all-foreground baseline" in report
    # The shared lines come from the harness once; the task adds only its own.
    assert report.count("best epoch ") == 1 and report.count("stopped by: ") == 1
    with open(os.path.join(workdir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {"val_dice", "val_cldice", "val_fg_fraction_pred", "train_loss", "lr"} <= set(rows[0])


def test_learning_rate_and_loss_terms_are_logged_every_step(surface_run):
    config, workdir, _, _ = surface_run
    steps = config.train.epochs * (config.data.train_patches // config.train.batch_size)
    directory = os.path.join(workdir, "tensorboard")
    assert _scalar_steps(directory, "train/lr") == list(range(1, steps + 1))
    for name in loss_lib.TERM_NAMES:
        assert _scalar_steps(directory, f"train/loss/{name}") == list(range(1, steps + 1))


def test_predicted_mask_and_volume_figures_match_a_recount(surface_run):
    config, workdir, _, console = surface_run
    truths = [mask for _, mask in splits_lib.volumes_for(config.data, config.seed)["test"]]
    figures = json.load(open(os.path.join(workdir, "volume_metrics.json")))
    assert len(figures["volumes"]) == len(truths)
    for index, (truth, saved) in enumerate(zip(truths, figures["volumes"], strict=True)):
        path = os.path.join(workdir, f"predicted_mask_{index}.npy")
        assert f"predicted mask: {path}" in console
        mask = np.load(path)
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert saved["components_pred"] == ndimage.label(mask)[1]
        assert saved["components_true"] == ndimage.label(truth)[1]
        overlap = np.sum((mask == 1) & (truth == 1))
        assert saved["dice"] == pytest.approx(2 * overlap / (mask.sum() + truth.sum()))
        assert saved["all_foreground_dice"] == pytest.approx(2 * truth.mean() / (1 + truth.mean()))


def test_prediction_table_holds_per_tile_fractions(surface_run):
    config, workdir, _, _ = surface_run
    splits = splits_lib.make_splits(config)
    table = np.genfromtxt(os.path.join(workdir, "predictions.csv"), delimiter=",", names=True)
    assert table.dtype.names == ("fg_fraction_true", "fg_fraction_pred", "dice")
    np.testing.assert_allclose(
        table["fg_fraction_true"], splits["test"]["labels"].mean(axis=(1, 2, 3)), atol=1e-6
    )
