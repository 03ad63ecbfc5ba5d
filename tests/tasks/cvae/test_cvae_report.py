"""The cVAE task's start-up and report lines (`jaxguard/tasks/cvae/report.py`)."""

import math
import os

import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.cvae import TASK, report
from jaxguard.tasks.cvae.report import volatility_summary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "configs", "cvae.py")
SMALL = CONFIG + ":small"
# The test metrics report_lines reads.
TEST_KEYS = (
    "count_tail mae_all mae_tail rmse_tail correlation bias_tail peak_ratio extreme_freq_pred "
    "extreme_freq_true recon_mae_all recon_mae_tail kl active_units mass_error"
).split()


@pytest.fixture(scope="module")
def small():
    config = config_lib.load_config(SMALL)
    return config, TASK.make_splits(config)


def test_warmup_warning_when_early_stopping_can_end_the_run_first(small):
    _, splits = small
    before_fix = config_lib.load_config(CONFIG + ":before_fix")
    lines = TASK.startup_lines(before_fix, splits)
    warnings = [line for line in lines if line.startswith("warning: KL weight warm-up")]
    assert len(warnings) == 1 and "epoch 20" in warnings[0]
    default = config_lib.load_config(CONFIG)
    assert not any("warm-up" in line for line in TASK.startup_lines(default, splits))


def _history(rec_losses):
    return tuple(
        {"epoch": float(epoch), "train_loss": 1.0, "val_rec_loss": value}
        for epoch, value in enumerate(rec_losses)
    )


def test_volatility_summary_reads_the_history():
    line = volatility_summary(_history([2.0, 4.0, 3.0, math.nan, 3.3]))
    # Finite values 2, 4, 3, 3.3: changes +100%, -25%, +10%.
    assert line.startswith("validation reconstruction loss over 4 epochs: 2 to 4 (max/min 2.00)")
    assert "largest epoch-to-epoch change +100%, median |change| 25%" in line
    assert volatility_summary(_history([2.0])) is None
    assert volatility_summary(()) is None


def _summary(best_epoch, history, steps_per_epoch=6):
    return RunSummary(
        workdir="runs/x",
        task="cvae",
        stopped_by=None,
        best_epoch=best_epoch,
        best_monitor="mae_all",
        epochs_run=len(history),
        steps_per_epoch=steps_per_epoch,
        train_seconds=12.0,
        param_count=6661,
        pretrain=None,
        test={key: 1.0 for key in TEST_KEYS},
        history=history,
    )


def test_report_lines_give_the_kl_weight_at_the_best_epoch_and_leave_shared_lines_out(small):
    config, splits = small
    # Warm-up over 2 epochs of 6 steps: after epoch 0 the KL weight is at half of loss.beta.
    lines = TASK.report_lines(config, splits, _summary(0, _history([3.0, 2.0, 2.5])))
    assert "KL weight at the best epoch (0): 50% of loss.beta" in lines
    assert lines[-1].startswith("validation reconstruction loss over 3 epochs: 2 to 3")
    assert lines[0] == "cVAE downscaling (seed 0), workdir runs/x"
    assert "parameters 6,661, 69 per training sample (96 samples)" in lines
    text = "\n".join(lines)
    assert "stopped by" not in text and "s of training" not in text  # the harness's lines
    later = TASK.report_lines(config, splits, _summary(2, _history([3.0, 2.0, 2.5])))
    assert "KL weight at the best epoch (2): 100% of loss.beta" in later


def test_ensemble_figures_draw_what_the_scores_and_history_hold():
    assert report.ensemble_figures({"mae_all": 1.0}, ({"epoch": 0, "val_loss": 1.0},), 50.0) == {}
    shares = np.array([0.4, 0.1, 0.1, 0.4])  # U-shaped: too narrow an ensemble.
    scores = {
        "rank_histogram": list(shares),
        "reliability_observed": [0.0, 0.2, np.nan, 0.9],
        "reliability_counts": [50.0, 5.0, 0.0, 5.0],
    }
    history = tuple(
        {"epoch": e, "val_spread": 1.0 + e, "val_ensemble_mean_rmse": 3.0} for e in range(3)
    )
    drawn = report.ensemble_figures(scores, history, 50.0)
    assert list(drawn) == ["rank_histogram", "reliability", "spread_skill"]
    bars = [p.get_height() for p in drawn["rank_histogram"].axes[0].patches]
    np.testing.assert_allclose(bars, shares)
    assert drawn["reliability"].axes[0].get_title() == "test: reliability of exceeding 50 mm/day"
    [spread, skill] = [line for line in drawn["spread_skill"].axes[0].get_lines()]
    np.testing.assert_allclose(spread.get_ydata(), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(skill.get_ydata(), [3.0, 3.0, 3.0])
