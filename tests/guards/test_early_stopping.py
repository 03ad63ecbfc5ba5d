"""EarlyStopping on scripted metric sequences, and the warm-up vs early-stopping check."""

import json

import pytest

from jaxguard.configs.base import get_config
from jaxguard.guards.base import GuardEvent
from jaxguard.guards.early_stopping import EarlyStopping, warmup_vs_early_stopping_warning

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
