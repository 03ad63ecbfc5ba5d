"""DisagreementGuard: the monitor improves while a quality metric falls behind (seed 000).

Each case fires on a scripted sequence shaped like the seed failure, stays silent on a healthy
one, and a guard resumed from its JSON state mid-sequence reports what the uninterrupted one does.
"""

import pytest
from guard_sequences import feed, messages, resumed_events

from jaxguard.guards import DisagreementGuard

# Seed 000: MAE-trained val loss keeps improving while R^2 falls from 0.35 to -0.2.
COLLAPSING = [
    {"loss": loss, "r2": r2}
    for loss, r2 in [
        (0.99, 0.10),
        (0.70, 0.35),
        (0.62, 0.30),
        (0.58, 0.20),
        (0.55, 0.05),
        (0.54, -0.10),
        (0.53, -0.20),
    ]
]


def make_disagreement():
    return DisagreementGuard("loss", "min", [("r2", "max")], tolerance=0.05, patience=3)


def test_disagreement_warns_when_the_monitor_improves_three_times_with_r2_behind_its_best():
    events = feed(make_disagreement(), COLLAPSING)
    assert [(event.level, event.epoch) for event in events] == [("warn", 4)]
    message = events[0].message
    assert "loss set a new best (0.55) 3 times while r2 stayed worse than its best" in message
    assert "0.35 (epoch 1), now 0.05" in message


def test_disagreement_is_silent_when_quality_follows_the_monitor():
    healthy = [{"loss": 1.0 / (1 + e), "r2": 0.1 * e} for e in range(8)]
    assert feed(make_disagreement(), healthy) == []
    # Quality behind its best while the monitor does not improve: early stopping's business.
    stalled = [{"loss": 0.5, "r2": 0.5}] + [{"loss": 0.6, "r2": 0.2}] * 6
    assert feed(make_disagreement(), stalled) == []


def test_disagreement_resets_when_quality_comes_back_and_resumes_exactly():
    back = COLLAPSING[:4] + [{"loss": 0.50, "r2": 0.40}] + COLLAPSING[4:]
    events = feed(make_disagreement(), back)
    assert [event.epoch for event in events] == []  # count 2, reset at epoch 4, then 2 again
    for cut in (2, 4, 5):
        assert messages(resumed_events(make_disagreement, COLLAPSING, cut)) == messages(
            feed(make_disagreement(), COLLAPSING)
        )


def test_disagreement_needs_a_quality_metric_other_than_the_monitor():
    with pytest.raises(ValueError, match="names no metric other than the monitor"):
        DisagreementGuard("r2", "max", [("r2", "max")])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        DisagreementGuard("loss", "min", [("r2", "up")])
