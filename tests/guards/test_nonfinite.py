"""The non-finite guard on scripted skip counters."""

import json

import pytest
from ml_collections import config_dict

from jaxguard.guards.base import GuardEvent
from jaxguard.guards.nonfinite import NonFiniteGuard

NAN = float("nan")
INF = float("inf")


def _json_round_trip(state):
    return json.loads(json.dumps(state, allow_nan=False))


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
