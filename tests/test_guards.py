"""Tests for the training guards on scripted metric sequences, by hand and with NumPy."""

import json
import math
import re

import numpy as np
import pytest
from ml_collections import config_dict

from jaxguard.configs.base import get_config
from jaxguard.guards import (
    CollapseGuard,
    EarlyStopping,
    GuardEvent,
    MonitorExpression,
    NonFiniteGuard,
    collapse_diagnostics,
    warmup_vs_early_stopping_warning,
)

NAN = float("nan")
INF = float("inf")


def _run(stopper, values, key="loss", first_epoch=0):
    """Feeds `values` as `key` from `first_epoch` on; returns the events by epoch."""
    events = {}
    for epoch, value in enumerate(values, start=first_epoch):
        event = stopper.update(epoch, {key: value})
        if event is not None:
            events[epoch] = event
        if stopper.should_stop:
            break
    return events


def _stop_epoch(events):
    stops = [epoch for epoch, event in events.items() if event.level == "stop"]
    assert len(stops) <= 1
    return stops[0] if stops else None


def _json_round_trip(state):
    return json.loads(json.dumps(state, allow_nan=False))


# ---------------------------------------------------------------- MonitorExpression


def test_monitor_bare_name_and_composite_match_hand_computation():
    metrics = {"loss": 0.53, "r2": -0.2, "std_ratio": 0.03}
    assert MonitorExpression("r2").evaluate(metrics) == -0.2
    composite = MonitorExpression("val_loss - 2*r2")
    assert composite.names == ("loss", "r2")
    assert composite.evaluate(metrics) == pytest.approx(0.53 - 2 * -0.2, abs=1e-15)
    grouped = MonitorExpression(" -(loss + r2) / 2 * std_ratio ")
    assert grouped.source == "-(loss + r2) / 2 * std_ratio"
    assert grouped.names == ("loss", "r2", "std_ratio")
    assert grouped.evaluate(metrics) == pytest.approx(-(0.53 - 0.2) / 2 * 0.03, abs=1e-15)


def test_monitor_division_by_zero_is_inf_not_an_error():
    assert MonitorExpression("loss / r2").evaluate({"loss": 1.0, "r2": 0.0}) == INF
    assert math.isnan(MonitorExpression("loss / r2").evaluate({"loss": 0.0, "r2": 0.0}))


@pytest.mark.parametrize(
    "source, bad_part",
    [
        ("__import__('os')", "the call `__import__('os')`"),
        ("loss.real", "the attribute access `loss.real`"),
        ("abs(r2)", "the call `abs(r2)`"),
        ("loss - r2.__class__", "the attribute access `r2.__class__`"),
        ("loss[0]", "the subscript `loss[0]`"),
        ("r2 ** 2", "the operator Pow in `r2 ** 2`"),
        ("loss // 2", "the operator FloorDiv in `loss // 2`"),
        ("+loss", "the operator UAdd in `+loss`"),
        ("'loss'", "the non-numeric constant `'loss'`"),
        ("loss + True", "the non-numeric constant `True`"),
        ("loss < r2", "the Compare expression `loss < r2`"),
        ("(lambda: 0)()", "the call `(lambda: 0)()`"),
    ],
)
def test_monitor_rejects_anything_outside_the_grammar(source, bad_part):
    with pytest.raises(ValueError, match=re.escape(bad_part) + " is not allowed"):
        MonitorExpression(source)


@pytest.mark.parametrize("source", ["loss -", "", "   ", "loss; r2"])
def test_monitor_rejects_syntax_errors_and_empty_strings(source):
    with pytest.raises(ValueError, match="monitor|non-empty"):
        MonitorExpression(source)


def test_monitor_validate_suggests_the_closest_name_in_one_line():
    available = ["loss", "r2", "std_ratio", "pred_std"]
    MonitorExpression("val_loss - 2 * r2").validate(available)
    with pytest.raises(ValueError, match=r"unknown metric 'r3' \(did you mean 'r2'\?\)") as info:
        MonitorExpression("loss - 2 * r3").validate(available)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"'std_ration' \(did you mean 'std_ratio'\?\)"):
        MonitorExpression("val_std_ration").validate(available)
    with pytest.raises(ValueError, match="unknown metric 'kl'; available: loss, pred_std"):
        MonitorExpression("kl").validate(available)


def test_monitor_evaluate_missing_name_lists_available_metrics():
    with pytest.raises(KeyError, match="reads r3, missing.*available: loss, r2"):
        MonitorExpression("loss - r3").evaluate({"loss": 1.0, "r2": 0.0})


# ---------------------------------------------------------------- EarlyStopping


def test_min_mode_stops_after_patience_evaluations_without_improvement():
    stopper = EarlyStopping("loss", "min", patience=3)
    events = _run(stopper, [1.0, 0.8, 0.7, 0.75, 0.70, 0.71, 0.5])
    assert _stop_epoch(events) == 5
    assert list(events) == [5]
    assert stopper.best_value == 0.7 and stopper.best_epoch == 2
    assert events[5] == GuardEvent(
        "early_stopping",
        "stop",
        "early stopping at epoch 5: loss = 0.71 has not improved on 0.7 (epoch 2) for 3 "
        "evaluations",
        epoch=5,
    )


def test_max_mode_reproduces_the_post_mortem_stop_message():
    # Best r2 0.455 at epoch 19, ten flat evaluations, stop at 29 (seed 000's run shape).
    r2 = [0.1 + 0.3 * e / 18 for e in range(19)] + [0.455] + [0.44, 0.43] * 4 + [0.45, 0.412]
    stopper = EarlyStopping("r2", "max", patience=10)
    events = _run(stopper, r2, key="r2")
    assert _stop_epoch(events) == 29
    assert events[29].message == (
        "early stopping at epoch 29: r2 = 0.412 has not improved on 0.455 (epoch 19) for 10 "
        "evaluations"
    )


def test_is_improvement_reports_each_new_best():
    stopper = EarlyStopping("loss", "min", patience=5)
    flags = []
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.9, 0.8]):
        stopper.update(epoch, {"loss": loss})
        flags.append(stopper.is_improvement)
    assert flags == [True, True, False, False, True]
    assert stopper.evaluations_without_improvement == 0


def test_negative_r2_rising_then_falling():
    stopper = EarlyStopping("r2", "max", patience=3)
    events = _run(stopper, [-0.5, -0.3, -0.1, -0.15, -0.2, -0.3, 0.9], key="r2")
    assert _stop_epoch(events) == 5
    assert stopper.best_value == -0.1 and stopper.best_epoch == 2
    assert "r2 = -0.3 has not improved on -0.1 (epoch 2)" in events[5].message


def test_negative_r2_min_delta_is_absolute():
    # -0.1 -> -0.06 is a 40% relative gain but only 0.04 absolute: not an improvement at 0.05.
    stopper = EarlyStopping("r2", "max", patience=2, min_delta=0.05)
    events = _run(stopper, [-0.1, -0.06, -0.055], key="r2")
    assert _stop_epoch(events) == 2
    assert stopper.best_value == -0.1
    assert "by more than 0.05 for 2 evaluations" in events[2].message


def test_elbo_improving_from_minus_300_to_minus_250():
    stopper = EarlyStopping("elbo", "max", patience=2)
    events = _run(stopper, [-300.0, -280.0, -260.0, -250.0, -251.0, -252.0, -200.0], key="elbo")
    assert _stop_epoch(events) == 5
    assert (stopper.best_value, stopper.best_epoch) == (-250.0, 3)
    assert "elbo = -252 has not improved on -250 (epoch 3)" in events[5].message


def test_min_delta_requires_a_larger_gain():
    # Binary-exact values: a gain of exactly min_delta (a tie) is not an improvement.
    stopper = EarlyStopping("loss", "min", patience=3, min_delta=0.25)
    flags = []
    for epoch, loss in enumerate([1.0, 0.875, 0.75, 0.5, 0.3, 0.25]):
        stopper.update(epoch, {"loss": loss})
        flags.append(stopper.is_improvement)
    assert flags == [True, False, False, True, False, False]
    assert (stopper.best_value, stopper.best_epoch) == (0.5, 3)
    assert not stopper.should_stop


def test_min_delta_stop_epoch():
    stopper = EarlyStopping("loss", "min", patience=2, min_delta=0.1)
    assert _stop_epoch(_run(stopper, [1.0, 0.95, 0.91, 0.5])) == 2


def test_start_epoch_ignores_earlier_evaluations():
    # A low loss during warm-up (epochs 0-4) is neither kept as best nor counted.
    # ... nor stopped by a threshold (0.9 > divergence_threshold) or a NaN.
    stopper = EarlyStopping("loss", "min", patience=2, start_epoch=5, divergence_threshold=0.85)
    losses = [0.1, 0.2, 0.9, 0.3, NAN, 0.6, 0.7, 0.8]
    events = _run(stopper, losses)
    assert events[4].level == "warn" and "before start_epoch 5" in events[4].message
    assert _stop_epoch(events) == 7
    assert (stopper.best_value, stopper.best_epoch) == (0.6, 5)


def test_start_epoch_before_it_no_best_and_no_improvement():
    stopper = EarlyStopping("loss", "min", patience=1, start_epoch=3, stopping_threshold=0.5)
    for epoch in range(3):
        assert stopper.update(epoch, {"loss": 0.1}) is None
        assert not stopper.is_improvement
        assert stopper.best_value is None
    event = stopper.update(3, {"loss": 0.4})
    assert stopper.is_improvement and event.level == "stop"


def test_stopping_threshold_stops_once_the_target_is_reached():
    stopper = EarlyStopping("r2", "max", patience=10, stopping_threshold=0.5)
    events = _run(stopper, [0.1, 0.3, 0.5, 0.6], key="r2")
    assert _stop_epoch(events) == 2
    assert stopper.is_improvement
    assert events[2].message == (
        "early stopping at epoch 2: r2 = 0.5 reached the stopping threshold 0.5 "
        "(best 0.5 (epoch 2))"
    )


def test_divergence_threshold_stops_once_the_value_is_that_bad():
    stopper = EarlyStopping("loss", "min", patience=10, divergence_threshold=10.0)
    events = _run(stopper, [1.0, 5.0, 12.0, 0.1])
    assert _stop_epoch(events) == 2
    assert "loss = 12 is past the divergence threshold 10 (best 1 (epoch 0))" in events[2].message
    maximising = EarlyStopping("r2", "max", patience=10, divergence_threshold=-1.0)
    assert _stop_epoch(_run(maximising, [0.2, -0.5, -1.0], key="r2")) == 2


def test_thresholds_must_be_ordered_by_mode():
    with pytest.raises(ValueError, match="`stopping_threshold` .* must be better"):
        EarlyStopping("loss", "min", 3, stopping_threshold=2.0, divergence_threshold=1.0)
    with pytest.raises(ValueError, match="`divergence_threshold` must be finite"):
        EarlyStopping("loss", "min", 3, divergence_threshold=NAN)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nonfinite_monitor_stops_when_check_finite(bad):
    stopper = EarlyStopping("loss - 2 * r2", "min", patience=10)
    stopper.update(0, {"loss": 0.5, "r2": 0.1})
    event = stopper.update(1, {"loss": bad, "r2": 0.1})
    assert event.level == "stop" and not stopper.is_improvement
    assert event.message == (
        f"early stopping at epoch 1: loss - 2 * r2 = {bad} is not finite (best 0.3 (epoch 0))"
    )


def test_nonfinite_monitor_without_check_finite_counts_as_no_improvement():
    stopper = EarlyStopping("loss", "min", patience=3, check_finite=False)
    events = _run(stopper, [1.0, NAN, -INF, NAN, 0.1])
    assert _stop_epoch(events) == 3
    assert (stopper.best_value, stopper.best_epoch) == (1.0, 0)
    only_nan = EarlyStopping("loss", "min", patience=2, check_finite=False)
    events = _run(only_nan, [NAN, NAN])
    assert "has had no finite value for 2 evaluations" in events[1].message


def test_composite_monitor_selects_a_different_best_epoch_than_loss():
    # Epoch 1 has the lowest loss but a negative r2 (collapsed predictions); the composite
    # val_loss - 2*r2 prefers epoch 2.
    history = [
        {"loss": 0.60, "r2": 0.10},
        {"loss": 0.50, "r2": -0.20},
        {"loss": 0.55, "r2": 0.30},
        {"loss": 0.52, "r2": 0.05},
        {"loss": 0.58, "r2": 0.12},
    ]
    by_loss = EarlyStopping("loss", "min", patience=5)
    by_composite = EarlyStopping("val_loss - 2*r2", "min", patience=2)
    for epoch, metrics in enumerate(history):
        by_loss.update(epoch, metrics)
        by_composite.update(epoch, metrics)
    assert by_loss.best_epoch == 1
    assert by_composite.best_epoch == 2
    assert by_composite.best_value == pytest.approx(0.55 - 2 * 0.30, abs=1e-12)
    assert by_composite.should_stop and not by_loss.should_stop


def test_state_dict_round_trip_resumes_to_the_same_stop():
    values = [0.9, 0.7, 0.8, 0.6, 0.65, 0.62, 0.61, 0.64, 0.63, 0.7]
    settings = dict(monitor="loss", mode="min", patience=4, min_delta=0.01, start_epoch=1)
    uninterrupted = EarlyStopping(**settings)
    expected = _run(uninterrupted, values)
    assert _stop_epoch(expected) == 7

    first = EarlyStopping(**settings)
    head = _run(first, values[:5])
    state = _json_round_trip(first.state_dict())
    resumed = EarlyStopping(**settings)
    resumed.load_state_dict(state)
    tail = _run(resumed, values[5:], first_epoch=5)
    assert {**head, **tail} == expected
    assert (resumed.best_value, resumed.best_epoch) == (0.6, 3)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_state_dict_refuses_another_monitor():
    state = EarlyStopping("loss", "min", 3).state_dict()
    with pytest.raises(ValueError, match="saved state has monitor 'loss' but this guard has 'r2'"):
        EarlyStopping("r2", "max", 3).load_state_dict(state)


def test_update_after_stop_or_out_of_order_fails():
    stopper = EarlyStopping("loss", "min", patience=1)
    stopper.update(3, {"loss": 1.0})
    with pytest.raises(ValueError, match="`epoch` must increase .* got 3 after 3"):
        stopper.update(3, {"loss": 1.0})
    stopper.update(4, {"loss": 2.0})
    with pytest.raises(RuntimeError, match="stopped at epoch 4"):
        stopper.update(5, {"loss": 0.5})


def test_early_stopping_from_config_and_argument_checks():
    cfg = get_config().guard.early_stopping
    cfg.monitor, cfg.mode, cfg.patience, cfg.stopping_threshold = "r2", "max", 4, 0.9
    stopper = EarlyStopping.from_config(cfg)
    assert (stopper.monitor.names, stopper.mode, stopper.patience) == (("r2",), "max", 4)
    assert stopper.stopping_threshold == 0.9 and stopper.divergence_threshold is None
    with pytest.raises(ValueError, match="`mode` must be 'min' or 'max', got 'maximize'"):
        EarlyStopping("r2", "maximize", 3)
    with pytest.raises(ValueError, match="`patience` must be >= 1, got 0"):
        EarlyStopping("r2", "max", 0)
    with pytest.raises(ValueError, match="EarlyStopping: `min_delta` must be finite and >= 0"):
        EarlyStopping("r2", "max", 3, min_delta=-0.1)


# ---------------------------------------------------------------- CollapseGuard

# Seed 000's collapsed run: 3.4% std ratio, pred std 0.0166 against target std 0.4827.
_COLLAPSED = {
    "loss": 0.53,
    "std_ratio": 0.034,
    "pred_std": 0.0166,
    "target_std": 0.4827,
    "r2": -0.2034,
}


def _collapse_events(guard, ratios, first_epoch=1, extra=None):
    events = {}
    for epoch, ratio in enumerate(ratios, start=first_epoch):
        event = guard.update(epoch, {"std_ratio": ratio, **(extra or {})})
        if event is not None:
            events[epoch] = (event.level, event.message)
    return events


def test_collapse_fires_on_constant_predictions_with_the_figures():
    guard = CollapseGuard(patience=3)
    events = [guard.update(epoch, _COLLAPSED) for epoch in (1, 2, 3)]
    assert events[0].level == "warn" and events[1] is None
    stop = events[2]
    assert stop.level == "stop" and stop.guard == "collapse" and stop.epoch == 3
    assert guard.should_stop
    assert stop.message == (
        "variance collapse: std_ratio 0.034 < 0.1 for 3 evaluations (pred std 0.0166, "
        "target std 0.4827, r2 -0.2034); predictions are near-constant (epoch 3, warn_below 0.5)"
    )


def test_collapse_quiet_on_a_healthy_run():
    guard = CollapseGuard()
    ratios = 0.9 + 0.05 * np.sin(np.arange(30))
    assert _collapse_events(guard, ratios) == {}


def test_collapse_warns_between_levels_without_spamming():
    guard = CollapseGuard(warn_below=0.5, stop_below=0.1, patience=3)
    events = _collapse_events(guard, [0.9] + [0.3] * 7 + [0.7, 0.3])
    assert sorted(events) == [2, 5, 8, 9, 10]
    assert [events[e][0] for e in (2, 5, 8, 9, 10)] == ["warn", "warn", "warn", "info", "warn"]
    assert events[2][1] == (
        "low prediction spread at epoch 2: std_ratio 0.3 < 0.5 for 1 evaluations; "
        "0 of 3 in a row below 0.1 stop the run"
    )
    assert "recovered at epoch 9: std_ratio 0.7 >= 0.5 after 7 evaluations" in events[9][1]
    assert not guard.should_stop


def test_collapse_count_resets_on_recovery_above_stop_below():
    guard = CollapseGuard(patience=3)
    events = _collapse_events(guard, [0.05, 0.05, 0.2, 0.05, 0.05, 0.05])
    assert [epoch for epoch, (level, _) in events.items() if level == "stop"] == [6]
    assert "for 3 evaluations" in events[6][1]


def test_collapse_counts_nan_as_collapsed():
    guard = CollapseGuard(patience=2)
    events = _collapse_events(guard, [0.8, NAN, NAN], extra={"pred_std": NAN})
    assert events[3][0] == "stop"
    assert events[3][1].startswith(
        "variance collapse: std_ratio nan (non-finite, counted as below 0.1) for 2 evaluations "
        "(pred std nan)"
    )


def test_collapse_ignores_evaluations_before_start_epoch():
    guard = CollapseGuard(patience=1, start_epoch=3)
    assert _collapse_events(guard, [0.01, 0.01], first_epoch=1) == {}
    assert guard.update(3, {"std_ratio": 0.01}).level == "stop"


def test_collapse_on_pred_std_leaves_it_out_of_the_figures():
    guard = CollapseGuard(metric="pred_std", warn_below=0.2, stop_below=0.05, patience=1)
    event = guard.update(1, _COLLAPSED)
    assert event.message.startswith(
        "variance collapse: pred_std 0.0166 < 0.05 for 1 evaluations (target std 0.4827, "
        "r2 -0.2034)"
    )


def test_collapse_state_round_trip_and_config():
    cfg = get_config().guard.collapse
    ratios = [0.3, 0.3, 0.05, 0.05, 0.3, 0.05, 0.05, 0.05]
    expected = _collapse_events(CollapseGuard.from_config(cfg), ratios)
    first = CollapseGuard.from_config(cfg)
    head = _collapse_events(first, ratios[:3])
    resumed = CollapseGuard.from_config(cfg)
    resumed.load_state_dict(_json_round_trip(first.state_dict()))
    tail = _collapse_events(resumed, ratios[3:], first_epoch=4)
    assert {**head, **tail} == expected
    assert expected[8][0] == "stop"


def test_collapse_argument_checks():
    with pytest.raises(ValueError, match="stop_below <= warn_below"):
        CollapseGuard(warn_below=0.1, stop_below=0.5)
    with pytest.raises(ValueError, match="unknown metric 'std_ration'.*'std_ratio'"):
        CollapseGuard(metric="std_ration").metric.validate(_COLLAPSED)


# ---------------------------------------------------------------- collapse_diagnostics


def test_collapse_diagnostics_match_numpy_by_hand():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.15, 1.95, size=40)
    pred = 0.72 + 0.02 * (target - target.mean()) + 0.005 * rng.standard_normal(40)
    diag = collapse_diagnostics(pred.reshape(8, 5), target.reshape(8, 5), bins=4)
    json.dumps(diag, allow_nan=False)
    assert diag["count"] == 40 and diag["nonfinite"] == 0
    np.testing.assert_allclose(diag["pred_std"], np.sqrt(np.mean((pred - pred.mean()) ** 2)))
    np.testing.assert_allclose(diag["target_mean"], np.sum(target) / 40)
    np.testing.assert_allclose(diag["pred_spread"], pred.max() - pred.min())
    np.testing.assert_allclose(diag["std_ratio"], np.std(pred) / np.std(target))
    np.testing.assert_allclose(diag["variance_ratio"], np.var(pred) / np.var(target))
    np.testing.assert_allclose(diag["variance_ratio"], diag["std_ratio"] ** 2)
    counts, edges = np.histogram(pred, bins=4)
    assert diag["pred_histogram_counts"] == counts.tolist()
    np.testing.assert_allclose(diag["pred_histogram_edges"], edges)
    assert diag["fraction_targets_above_pred_max"] == np.count_nonzero(target > pred.max()) / 40
    assert diag["fraction_targets_below_pred_min"] == np.count_nonzero(target < pred.min()) / 40
    order = np.argsort(target)
    groups = diag["by_target_quantile"]
    assert [g["count"] for g in groups] == [8] * 5
    for index, group in enumerate(groups):
        members = order[8 * index : 8 * (index + 1)]
        np.testing.assert_allclose(group["target_mean"], target[members].mean())
        np.testing.assert_allclose(group["pred_mean"], pred[members].mean())
        assert group["target_min"] == target[members].min()
    # The collapsed model underpredicts the highest targets by far.
    assert groups[-1]["target_mean"] - groups[-1]["pred_mean"] > 0.7


def test_collapse_diagnostics_drops_nonfinite_pairs_and_handles_constants():
    pred = np.array([1.0, NAN, 1.0, 1.0, 2.0])
    target = np.array([0.0, 1.0, 2.0, INF, 4.0])
    diag = collapse_diagnostics(pred, target, bins=2, quantile_bins=5)
    assert (diag["count"], diag["nonfinite"]) == (3, 2)
    assert [g["count"] for g in diag["by_target_quantile"]] == [1, 1, 1]
    constant = collapse_diagnostics(np.ones(4), np.full(4, 2.0))
    assert constant["std_ratio"] is None and constant["variance_ratio"] is None
    assert constant["fraction_targets_above_pred_max"] == 1.0
    json.dumps(constant, allow_nan=False)
    assert collapse_diagnostics(np.full(3, NAN), np.ones(3)) == {"count": 0, "nonfinite": 3}


def test_collapse_diagnostics_shape_mismatch_names_the_arguments():
    with pytest.raises(ValueError, match="collapse_diagnostics: `pred` has shape .* `target`"):
        collapse_diagnostics(np.ones(3), np.ones(4))


# ---------------------------------------------------------------- NonFiniteGuard

_BAD_TERMS = {"loss/total": NAN, "loss/rec": 0.4, "loss/kl": INF, "grad_norm": NAN, "lr": 1e-3}


def test_nonfinite_stops_after_max_consecutive_and_names_the_terms():
    guard = NonFiniteGuard(max_consecutive=5)
    events = [guard.update(808 + k, k + 1, k + 1, _BAD_TERMS) for k in range(5)]
    assert events[0].level == "warn" and events[0].step == 808
    assert events[0].message == (
        "non-finite updates skipped up to step 808: 1 new, 1 in a row, 1 in total "
        "(stop at 5 in a row); non-finite terms: loss/total, loss/kl, grad_norm"
    )
    assert events[1:4] == [None, None, None]
    assert events[4] == GuardEvent(
        "nonfinite",
        "stop",
        "non-finite loss: 5 updates in a row skipped up to step 812 (5 in total); "
        "non-finite terms: loss/total, loss/kl, grad_norm",
        step=812,
    )
    with pytest.raises(RuntimeError, match="stopped at step 812"):
        guard.update(813, 0, 5, {})


def test_nonfinite_warns_once_per_new_streak():
    guard = NonFiniteGuard(max_consecutive=5)
    good = {"loss/total": 0.3}
    calls = [
        (20, 0, 0, good),  # clean
        (40, 2, 2, _BAD_TERMS),  # a streak starts: warn
        (60, 4, 4, _BAD_TERMS),  # the same streak grows: quiet
        (80, 0, 4, good),  # recovered: quiet
        (100, 1, 5, _BAD_TERMS),  # a new streak: warn
        (120, 0, 7, good),  # two skips between logs, none in a row now: warn
        (140, 0, 7, good),
    ]
    levels = [None if (e := guard.update(*call)) is None else e.level for call in calls]
    assert levels == [None, "warn", None, None, "warn", "warn", None]
    assert not guard.should_stop


def test_nonfinite_names_none_when_logged_terms_are_finite():
    guard = NonFiniteGuard(max_consecutive=2)
    event = guard.update(10, 2, 2, {"loss/total": 0.3})
    assert event.level == "stop"
    assert event.message.endswith("non-finite terms: none of the logged values")


def test_nonfinite_rejects_inconsistent_counters():
    guard = NonFiniteGuard(max_consecutive=3)
    guard.update(10, 1, 2, {})
    with pytest.raises(ValueError, match="inconsistent counters at step 20"):
        guard.update(20, 0, 1, {})
    with pytest.raises(ValueError, match="inconsistent counters at step 30"):
        NonFiniteGuard(3).update(30, 2, 1, {})
    with pytest.raises(TypeError, match="`total_nonfinite` must be an integer, got 1.5"):
        NonFiniteGuard(3).update(30, 1, 1.5, {})


def test_nonfinite_state_round_trip_and_config():
    cfg = config_dict.ConfigDict({"max_consecutive": 3})
    calls = [(10, 1, 1, _BAD_TERMS), (20, 2, 2, _BAD_TERMS), (30, 3, 3, _BAD_TERMS)]
    uninterrupted = NonFiniteGuard.from_config(cfg)
    expected = [uninterrupted.update(*call) for call in calls]
    first = NonFiniteGuard.from_config(cfg)
    head = [first.update(*call) for call in calls[:1]]
    resumed = NonFiniteGuard.from_config(cfg)
    resumed.load_state_dict(_json_round_trip(first.state_dict()))
    assert head + [resumed.update(*call) for call in calls[1:]] == expected
    assert [e and e.level for e in expected] == ["warn", None, "stop"]
    with pytest.raises(ValueError, match="saved state has max_consecutive 3"):
        NonFiniteGuard(5).load_state_dict(first.state_dict())


# ---------------------------------------------------------------- warm-up vs early stopping


def test_warmup_warning_fires_for_the_seed_002_settings():
    cfg = get_config().guard.early_stopping
    cfg.patience, cfg.start_epoch = 20, 0
    warning = warmup_vs_early_stopping_warning(30, cfg)
    assert warning == (
        "early stopping can end the run at epoch 20 (start_epoch 0 + patience 20 x 1 epochs per "
        "evaluation), before the 30-epoch warm-up has finished; set "
        "guard.early_stopping.start_epoch to at least 30 (or raise patience) so the best "
        "checkpoint and the stop come after the warm-up"
    )
    # The run it describes: best at epoch 5, stopped at epoch 25, inside the 30-epoch warm-up.
    stopper = EarlyStopping.from_config(cfg)
    losses = [3.0, 2.5, 2.2, 2.14, 2.135, 2.13] + [2.2 + 0.1 * (k % 3) for k in range(30)]
    assert _stop_epoch(_run(stopper, losses)) == 25 < 30


def test_warmup_warning_quiet_for_the_fixed_settings_and_the_boundary():
    cfg = get_config().guard.early_stopping
    cfg.patience = 25
    assert warmup_vs_early_stopping_warning(15, cfg) is None
    cfg.patience, cfg.start_epoch = 20, 10
    assert warmup_vs_early_stopping_warning(30, cfg) is None  # 10 + 20 == 30: not before
    assert warmup_vs_early_stopping_warning(30.5, cfg) is not None
    cfg.start_epoch = 0
    assert warmup_vs_early_stopping_warning(30, cfg, eval_every_epochs=2) is None
    assert warmup_vs_early_stopping_warning(0.0, cfg) is None
    cfg.enabled = False
    assert warmup_vs_early_stopping_warning(30, cfg) is None
