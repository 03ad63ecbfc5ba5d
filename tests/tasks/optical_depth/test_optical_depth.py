"""The optical-depth package as the harness sees it: a run on user sequences (`data.source`).

The embedded data's runs are tested in tests/test_train.py; here a one-epoch `small` run reads
an `.npz` of user sequences, which carry no oracle, and still writes its report and tables.
"""

import csv
import io
import os

import numpy as np

from jaxguard import config as config_lib
from jaxguard import trainer
from jaxguard.tasks.optical_depth import data
from jaxguard.writers import Console

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "optical_depth.py:small")


def test_a_run_on_user_sequences_reports_without_an_oracle(tmp_path):
    embedded = data.generate(
        num_train=120, num_val=1, num_test=1, frames=3, image_size=8, noise=0.3, seed=5
    )["train"]
    # Stored as a user would: raw brightness [N, T, H, W], not the generator's standardised frames.
    frames = embedded["frames"][..., 0] * 40.0 + 900.0
    source = tmp_path / "sky.npz"
    np.savez(source, frames=frames, targets=embedded["target"])
    config = config_lib.load_config(
        SMALL, [f"data.source={source}", "train.epochs=1", "optim.warmup_epochs=0.0"]
    )
    stream = io.StringIO()
    workdir = str(tmp_path / "run")
    summary = trainer.train_and_evaluate(config, workdir, console=Console(stream))
    console = stream.getvalue()
    assert "train targets: mean" in console and "oracle" not in console
    report = open(os.path.join(workdir, "report.txt")).read()
    assert f"R² {summary['test']['r2']:.4f}\n" in report  # no oracle share on user data
    with open(os.path.join(workdir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and "oracle" not in rows[0]  # 15% of 120 sequences, the last ones
    np.testing.assert_allclose(
        [float(r["true"]) for r in rows],
        embedded["target"][102:],
        atol=5e-6,  # predictions.csv keeps 6 digits
    )
