"""EnsembleSpreadGuard: CollapseGuard's rules on the spread/skill ratio, worded for ensembles."""

import pytest

from jaxguard.configs.base import get_config
from jaxguard.guards import EnsembleSpreadGuard, Evaluation
from jaxguard.guards.base import Diagnostics

COLLAPSED = {"spread": 0.135, "ensemble_mean_rmse": 1.49, "rank_low": 0.29, "rank_high": 0.57}


def metrics(spread_skill, **extra):
    return {"spread_skill": spread_skill, "crps": 0.61, **COLLAPSED, **extra}


def test_stops_after_patience_evaluations_below_stop_with_the_figures():
    guard = EnsembleSpreadGuard(warn_below=0.5, stop_below=0.3, patience=2, start_epoch=1)
    assert guard.on_evaluation(Evaluation(0, metrics(0.05))) is None  # Before start_epoch.
    warn = guard.on_evaluation(Evaluation(1, metrics(0.09)))
    assert warn.level == "warn" and warn.guard == "ensemble_spread"
    assert warn.message.startswith("low ensemble spread at epoch 1: spread_skill 0.09 < 0.5")
    stop = guard.on_evaluation(Evaluation(2, metrics(0.09)))
    assert stop.level == "stop" and stop.epoch == 2
    assert stop.message.startswith("ensemble collapse: spread_skill 0.09 < 0.3 for 2 evaluations")
    for figure in (
        "member spread 0.135",
        "ensemble-mean RMSE 1.49",
        "truth below every member 0.29",
        "above every member 0.57",
        "fair CRPS 0.61",
    ):
        assert figure in stop.message


def test_silent_on_a_calibrated_ensemble_and_reports_recovery():
    guard = EnsembleSpreadGuard(start_epoch=0)
    for epoch, value in enumerate([0.95, 1.1, 0.8, 1.02]):
        assert guard.on_evaluation(Evaluation(epoch, metrics(value))) is None
    assert guard.on_evaluation(Evaluation(4, metrics(0.4))).level == "warn"
    recovered = guard.on_evaluation(Evaluation(5, metrics(0.9)))
    assert recovered.level == "info" and "ensemble spread recovered at epoch 5" in recovered.message


def test_a_nan_ratio_counts_as_collapsed():
    guard = EnsembleSpreadGuard(patience=1, start_epoch=0)
    assert guard.on_evaluation(Evaluation(0, metrics(float("nan")))).level == "stop"


def test_from_config_reads_the_base_section_and_rejects_one_member():
    cfg = get_config().guard.ensemble_spread
    guard = EnsembleSpreadGuard.from_config(cfg)
    assert (guard.members, guard.warn_below, guard.stop_below, guard.patience) == (8, 0.5, 0.3, 2)
    assert not cfg.enabled
    with pytest.raises(ValueError, match="`members` must be >= 2"):
        EnsembleSpreadGuard(members=1)


def test_state_round_trip_continues_the_count():
    first = EnsembleSpreadGuard(patience=3, start_epoch=0)
    first.on_evaluation(Evaluation(0, metrics(0.1)))
    first.on_evaluation(Evaluation(1, metrics(0.1)))
    second = EnsembleSpreadGuard(patience=3, start_epoch=0)
    second.load_state_dict(first.state_dict())
    assert second.on_evaluation(Evaluation(2, metrics(0.1))).level == "stop"


def test_ensemble_spread_is_judged_at_evaluations_only():
    guard = EnsembleSpreadGuard(stop_below=0.3, patience=1, start_epoch=0)
    collapsed = Diagnostics(10, 3, {"spread_skill": 0.01})
    assert guard.on_diagnostics(collapsed) is None and guard.on_diagnostics(collapsed) is None
