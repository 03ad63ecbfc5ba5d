"""BestCheckpoint: which evaluation is the best, by hand and against EarlyStopping's rule."""

import json

import numpy as np
import pytest

from jaxguard.configs.base import get_config
from jaxguard.guards.best import BestCheckpoint
from jaxguard.guards.early_stopping import EarlyStopping

NAN = float("nan")
INF = float("inf")


def _flags(best, values, key="loss", first_epoch=0):
    return [best.update(epoch, {key: v}) for epoch, v in enumerate(values, start=first_epoch)]


def test_min_mode_each_new_lowest_value_is_the_best():
    best = BestCheckpoint("loss")
    assert _flags(best, [1.0, 0.9, 0.95, 0.9, 0.8]) == [True, True, False, False, True]
    assert (best.best_value, best.best_epoch) == (0.8, 4)


def test_max_mode_each_new_highest_value_is_the_best():
    best = BestCheckpoint("r2", "max")
    flags = _flags(best, [-0.5, -0.3, -0.1, -0.15, 0.2, 0.2], key="r2")
    assert flags == [True, True, True, False, True, False]  # A tie is not better.
    assert (best.best_value, best.best_epoch) == (0.2, 4)


def test_min_delta_requires_a_gain_larger_than_it():
    # Binary-exact values: a gain of exactly min_delta (1.0 -> 0.75) is a tie, not better.
    best = BestCheckpoint("loss", min_delta=0.25)
    flags = _flags(best, [1.0, 0.875, 0.75, 0.5, 0.3, 0.25])
    assert flags == [True, False, False, True, False, False]
    assert (best.best_value, best.best_epoch) == (0.5, 3)
    maximising = BestCheckpoint("r2", "max", min_delta=0.05)
    assert _flags(maximising, [-0.1, -0.06, -0.04], key="r2") == [True, False, True]


def test_evaluations_before_start_epoch_are_never_the_best():
    best = BestCheckpoint("loss", start_epoch=3)
    assert _flags(best, [0.1, 0.1, 0.1, 0.4, 0.5, 0.3]) == [False] * 3 + [True, False, True]
    assert (best.best_value, best.best_epoch) == (0.3, 5)


def test_a_nonfinite_value_is_never_the_best():
    # -inf would beat everything in mode "min" and +inf in mode "max" without the finite check.
    best = BestCheckpoint("loss")
    flags = _flags(best, [NAN, 1.0, NAN, -INF, INF, 0.5])
    assert flags == [False, True, False, False, False, True]
    assert (best.best_value, best.best_epoch) == (0.5, 5)
    maximising = BestCheckpoint("r2", "max")
    assert _flags(maximising, [INF, 0.1, INF], key="r2") == [False, True, False]
    assert BestCheckpoint("loss / r2").update(0, {"loss": 1.0, "r2": 0.0}) is False


def test_composite_monitor_is_evaluated_on_the_metrics():
    best = BestCheckpoint("val_loss - 2*r2")
    history = [{"loss": 0.60, "r2": 0.10}, {"loss": 0.50, "r2": -0.20}, {"loss": 0.55, "r2": 0.30}]
    assert [best.update(e, m) for e, m in enumerate(history)] == [True, False, True]
    assert best.best_epoch == 2
    assert best.best_value == pytest.approx(0.55 - 2 * 0.30, abs=1e-12)


@pytest.mark.parametrize(
    "mode, min_delta, start_epoch", [("min", 0.0, 0), ("min", 0.1, 4), ("max", 0.05, 2)]
)
def test_same_best_as_early_stopping_with_the_same_settings(mode, min_delta, start_epoch):
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 0.3, 60).cumsum()
    values[rng.choice(60, 6, replace=False)] = NAN
    best = BestCheckpoint("loss", mode, min_delta=min_delta, start_epoch=start_epoch)
    # check_finite off: a NaN must not end the comparison early.
    stopper = EarlyStopping(
        "loss", mode, 1000, min_delta=min_delta, start_epoch=start_epoch, check_finite=False
    )
    for epoch, value in enumerate(values):
        stopper.update(epoch, {"loss": value})
        assert best.update(epoch, {"loss": value}) == stopper.is_improvement, epoch
    assert (best.best_value, best.best_epoch) == (stopper.best_value, stopper.best_epoch)


def test_state_round_trip_resumes_to_the_same_choice():
    values = [0.9, NAN, 0.7, 0.8, 0.6, 0.65, 0.55, 0.58, 0.5]
    settings = dict(monitor="loss", mode="min", min_delta=0.01, start_epoch=1)
    uninterrupted = BestCheckpoint(**settings)
    expected = _flags(uninterrupted, values)
    first = BestCheckpoint(**settings)
    head = _flags(first, values[:4])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert state == {"monitor": "loss", "mode": "min", "best_value": 0.7, "best_epoch": 2}
    resumed = BestCheckpoint(**settings)
    resumed.load_state_dict(state)
    assert head + _flags(resumed, values[4:], first_epoch=4) == expected
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert (resumed.best_value, resumed.best_epoch) == (0.5, 8)


def test_state_from_another_monitor_or_mode_is_refused():
    state = BestCheckpoint("loss").state_dict()
    with pytest.raises(ValueError, match="saved state has monitor 'loss' but this guard has 'r2'"):
        BestCheckpoint("r2").load_state_dict(state)
    with pytest.raises(ValueError, match="saved state has mode 'min' but this guard has 'max'"):
        BestCheckpoint("loss", "max").load_state_dict(state)


def test_from_config_follows_early_stopping():
    guard = get_config().guard
    stop = guard.early_stopping
    stop.monitor, stop.mode, stop.min_delta, stop.start_epoch = "r2", "max", 0.02, 5
    best = BestCheckpoint.from_config(guard)
    assert (best.monitor.source, best.mode, best.min_delta, best.start_epoch) == (
        "r2",
        "max",
        0.02,
        5,
    )


def test_from_config_without_early_stopping_keeps_no_best():
    guard = get_config().guard
    guard.early_stopping.enabled = False
    assert BestCheckpoint.from_config(guard) is None
    guard.early_stopping.enabled = True
    guard.best.enabled = False
    assert BestCheckpoint.from_config(guard) is None


def test_from_config_with_its_own_monitor():
    guard = get_config().guard
    guard.early_stopping.min_delta, guard.early_stopping.start_epoch = 0.5, 9
    guard.best.monitor, guard.best.mode, guard.best.start_epoch = "loss - r2", "min", 3
    best = BestCheckpoint.from_config(guard)
    assert (best.monitor.source, best.mode, best.start_epoch) == ("loss - r2", "min", 3)
    assert best.min_delta == 0.0  # Early stopping's settings are not taken with an own monitor.
    guard.early_stopping.enabled = False  # ... and it works with early stopping off.
    assert BestCheckpoint.from_config(guard).monitor.names == ("loss", "r2")
    guard.best.enabled = False
    assert BestCheckpoint.from_config(guard) is None


def test_check_metrics_and_argument_checks():
    BestCheckpoint("val_loss - r2").check_metrics(["loss", "r2", "train_loss"])
    with pytest.raises(ValueError, match=r"unknown metric 'r3' \(did you mean 'r2'\?\)"):
        BestCheckpoint("loss - r3").check_metrics(["loss", "r2"])
    with pytest.raises(ValueError, match="BestCheckpoint: `mode` must be 'min' or 'max'"):
        BestCheckpoint("loss", "maximize")
    with pytest.raises(ValueError, match="BestCheckpoint: `min_delta` must be finite and >= 0"):
        BestCheckpoint("loss", min_delta=-0.1)
    with pytest.raises(ValueError, match="BestCheckpoint: `start_epoch` must be >= 0, got -1"):
        BestCheckpoint("loss", start_epoch=-1)
