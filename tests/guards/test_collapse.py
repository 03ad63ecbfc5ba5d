"""The variance-collapse guard on scripted metric sequences, and its diagnostics by NumPy."""

import json

import numpy as np
import pytest

from jaxguard.configs.base import get_config
from jaxguard.guards.base import Diagnostics
from jaxguard.guards.collapse import CollapseGuard, collapse_diagnostics

NAN = float("nan")
INF = float("inf")


def _json_round_trip(state):
    return json.loads(json.dumps(state, allow_nan=False))


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


def test_collapse_stops_inside_an_epoch_on_the_diagnostics_cadence():
    guard = CollapseGuard(metric="std_ratio", warn_below=0.5, stop_below=0.1, patience=2)

    def check(step, epoch, ratio):
        metrics = {"std_ratio": ratio, "pred_std": ratio * 0.48, "target_std": 0.48}
        return guard.on_diagnostics(Diagnostics(step, epoch, metrics))

    assert check(100, 0, 0.01) is None  # Before start_epoch 1.
    assert check(200, 1, 0.05) is None
    assert check(300, 1, 0.5) is None  # Back above: the count restarts.
    assert check(400, 1, 0.04) is None
    event = check(500, 1, float("nan"))  # NaN predictions have no spread: below.
    assert event.level == "stop" and event.step == 500 and event.epoch == 1
    assert event.message.startswith("variance collapse inside epoch 1 (step 500)")
    assert "for 2 diagnostics checks in a row" in event.message
    # Diagnostics without the watched metric (a task that logs other keys) are skipped.
    other = CollapseGuard(metric="std_ratio")
    assert other.on_diagnostics(Diagnostics(100, 5, {"r2": 0.1})) is None
