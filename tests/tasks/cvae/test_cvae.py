"""End-to-end cVAE run with the `small` variant, the sampling CLI and the PNG panel."""

import csv
import io
import os
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from jaxguard import config as config_lib
from jaxguard import figures, sample, trainer
from jaxguard.tasks.cvae import TASK, panel
from jaxguard.writers import Console

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


@pytest.fixture(scope="session")
def cvae_run(tmp_path_factory):
    """One small run, shared by the tests that inspect its outputs; its console text too."""
    workdir = str(tmp_path_factory.mktemp("cvae") / "run")
    config = config_lib.load_config(SMALL)
    stream = io.StringIO()
    summary = trainer.train_and_evaluate(config, workdir, console=Console(stream))
    return config, workdir, summary, stream.getvalue()


def _read_events(logdir: str) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the TFRecord event files of `logdir`."""
    scalars = []
    for name in sorted(n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")):
        with open(os.path.join(logdir, name), "rb") as f:
            content = f.read()
        offset = 0
        while offset < len(content):
            # TFRecord: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data.
            (length,) = struct.unpack("<Q", content[offset : offset + 8])
            event = event_pb2.Event.FromString(content[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.append((event.step, value.tag, value.simple_value))
    return scalars


def test_run_writes_events_checkpoints_report_and_panel(cvae_run):
    config, workdir, summary, console = cvae_run
    files = set(os.listdir(workdir))
    assert {"config.json", "log.csv", "test_metrics.json", "predictions.csv", "report.txt"} <= files
    assert os.listdir(os.path.join(workdir, "checkpoints", "best"))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(f"{workdir}/tensorboard"))
    panel = os.path.join(workdir, "samples", "panel.png")
    assert f"sample panel: {panel}" in console
    assert console.rstrip().endswith(f"report: {os.path.join(workdir, 'report.txt')}")
    assert "parameters per example" in console and "extremes: x > 50 mm/day" in console
    with np.load(os.path.join(workdir, "samples", "ensemble.npz")) as saved:
        assert saved["samples"].shape == (2, 3, 16, 16)
        assert np.all(saved["samples"] >= 0)
        test = TASK.make_splits(config)["test"]
        np.testing.assert_array_equal(saved["x"], test["x"][saved["indices"]])
        assert test["has_extreme"][saved["indices"][0]] == 1  # heaviest day first
    report = open(os.path.join(workdir, "report.txt")).read()
    assert f"tail MAE {summary['test']['mae_tail']:.4f}" in report
    assert "validation reconstruction loss over 3 epochs" in report
    # The task's KL-weight line, and the harness's shared lines once each.
    assert "KL weight at the best epoch" in report
    assert report.count("stopped by:") == 1 and report.count(" s of training") == 1
    table = np.loadtxt(os.path.join(workdir, "predictions.csv"), delimiter=",", skiprows=1)
    assert table.shape == (config.data.num_test, 9)


def test_logged_loss_terms_sum_to_the_logged_total(cvae_run):
    _, workdir, _, _ = cvae_run
    by_step = {}
    for step, tag, value in _read_events(os.path.join(workdir, "tensorboard")):
        by_step.setdefault(step, {})[tag] = value
    checked = 0
    for scalars in by_step.values():
        if "train/loss" not in scalars:
            continue
        weighted = [v for k, v in scalars.items() if k.endswith("/weighted")]
        assert len(weighted) == 5  # mae, crps, extreme, kl, mass
        assert sum(weighted) == pytest.approx(scalars["train/loss"], rel=1e-5)
        checked += 1
    assert checked >= 3


def test_log_has_kl_per_dimension_active_units_and_volatility(cvae_run):
    config, workdir, _, _ = cvae_run
    with open(os.path.join(workdir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == config.train.epochs
    for row in rows:
        per_dim = [float(row[f"val_kl_dim_{i:02d}"]) for i in range(config.model.d_z)]
        assert sum(per_dim) == pytest.approx(float(row["val_kl"]), rel=1e-6)
        assert 0 <= float(row["val_active_units"]) <= config.model.d_z
    changes = [float(r["val_loss_change"]) for r in rows[1:]]
    assert all(np.isfinite(changes))
    expected = {"val_rec_loss", "val_mae_tail", "val_extreme_freq_pred", "val_correlation"}
    assert expected <= set(rows[0])


def test_sample_cli_reproduces_the_exported_ensemble(cvae_run, tmp_path, capsys):
    _, workdir, _, _ = cvae_run
    out = tmp_path / "again"
    png_path, npz_path = sample.main(["--run", workdir, "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"sample panel: {png_path}" in printed and f"samples: {npz_path}" in printed
    exported = np.load(os.path.join(workdir, "samples", "ensemble.npz"))
    again = np.load(npz_path)
    np.testing.assert_array_equal(again["indices"], exported["indices"])
    np.testing.assert_allclose(again["samples"], exported["samples"], rtol=1e-4, atol=1e-4)

    _, npz_path = sample.main(
        [
            "--run",
            workdir,
            "--n",
            "5",
            "--indices",
            "0,7",
            "--split",
            "val",
            "--out",
            str(tmp_path / "val"),
        ]
    )
    with np.load(npz_path) as drawn:
        assert drawn["samples"].shape == (2, 5, 16, 16)
        members = drawn["samples"].reshape(2, 5, -1)
        assert np.ptp(members, axis=1).max() > 0  # distinct latent draws


def test_sample_cli_on_user_predictors_and_its_errors(cvae_run, tmp_path):
    _, workdir, _, _ = cvae_run
    _, _, splits = trainer.restore_model(workdir)
    good = tmp_path / "days.npz"
    np.savez(good, y=splits["test"]["y"][:3])
    png_path, npz_path = sample.main(
        ["--run", workdir, "--predictors", str(good), "--n", "2", "--out", str(tmp_path / "u")]
    )
    with np.load(npz_path) as drawn:
        assert drawn["samples"].shape == (3, 2, 16, 16) and "x" not in drawn.files
    assert os.path.getsize(png_path) > 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=splits["test"]["y"][:3, :2])
    with pytest.raises(SystemExit) as exit_info:
        config_lib.exit_on_config_error(sample.main, ["--run", workdir, "--predictors", str(bad)])
    assert exit_info.value.code == 2
    with pytest.raises(config_lib.ConfigError, match="outside the test split"):
        sample.main(["--run", workdir, "--indices", "0,9999"])


def test_panel_png_and_the_run_figures_decode_at_their_figure_sizes(cvae_run):
    _, workdir, summary, console = cvae_run
    with np.load(os.path.join(workdir, "samples", "ensemble.npz")) as saved:
        expected = panel.panel_figure(
            saved["y"], saved["x"], saved["samples"], threshold=float(saved["threshold"]), title="t"
        )
    width, height = expected.get_size_inches() * figures.DPI
    with Image.open(os.path.join(workdir, "samples", "panel.png")) as image:
        assert (image.format, image.size) == ("PNG", (int(width), int(height)))
    names = ["learning_curves"]
    if "rank_histogram" in summary["test"]:
        names += ["rank_histogram", "reliability"]
    with open(os.path.join(workdir, "log.csv")) as f:
        if "val_spread" in f.readline().split(","):
            names.append("spread_skill")
    assert sorted(os.listdir(os.path.join(workdir, "figures"))) == sorted(f"{n}.png" for n in names)
    for name in names:
        with Image.open(os.path.join(workdir, "figures", f"{name}.png")) as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert f"figures: {os.path.join(workdir, 'figures')}/" in console
