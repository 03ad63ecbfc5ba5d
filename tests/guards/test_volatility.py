"""VolatilityGuard: a watched metric that jumps the wrong way between evaluations (seed 002).

Each case fires on a scripted sequence shaped like the seed failure, stays silent on a healthy
one, and a guard resumed from its JSON state mid-sequence reports what the uninterrupted one does.
"""

import pytest
from guard_sequences import feed, messages, resumed_events

from jaxguard.guards import VolatilityGuard

# Seed 002 before its fixes: the reconstruction loss swings while the field MAE barely moves.
VOLATILE = [
    {"rec_loss": value, "mae_all": mae}
    for value, mae in [(4.0, 1.0), (2.6, 0.9), (2.13, 0.85), (6.55, 0.86), (3.0, 0.84), (2.4, 0.8)]
]


def make_volatility():
    return VolatilityGuard([("rec_loss", "min"), ("mae_all", "min")], max_jump=1.0, start_epoch=1)


def test_volatility_warns_on_the_seed_spike_and_quotes_the_stable_metric():
    events = feed(make_volatility(), VOLATILE)
    assert [(event.level, event.epoch) for event in events] == [("warn", 3)]
    # (6.55 - 2.13) / max(2.13, best 2.13) = +208%; mae_all +1% over the same evaluation.
    assert "volatile rec_loss at epoch 3: it got 208% worse" in events[0].message
    assert "mae_all +1%" in events[0].message


def test_volatility_is_silent_on_a_steady_fall_and_on_improvements():
    steady = [{"rec_loss": 4.0 * 0.8**epoch, "mae_all": 1.0} for epoch in range(10)]
    assert feed(make_volatility(), steady) == []
    # A metric that halves from one evaluation to the next improves: never a spike.
    assert (
        feed(make_volatility(), [{"rec_loss": 8.0 / 4**e, "mae_all": 1.0} for e in range(5)]) == []
    )


def test_volatility_scales_a_metric_that_crosses_zero_by_its_best():
    guard = VolatilityGuard([("r2", "max")], max_jump=1.0, start_epoch=0)
    # r2 0.6 -> 0.01 -> -0.02: relative to the previous value that is -300%, to the best 5%.
    assert feed(guard, [{"r2": 0.6}, {"r2": 0.01}, {"r2": -0.02}]) == []


def test_volatility_ignores_spikes_before_start_epoch_and_resumes_exactly():
    guard = VolatilityGuard([("rec_loss", "min")], max_jump=1.0, start_epoch=4)
    assert feed(guard, VOLATILE) == []
    for cut in (1, 3, 4):
        assert messages(resumed_events(make_volatility, VOLATILE, cut)) == messages(
            feed(make_volatility(), VOLATILE)
        )


def test_volatility_refuses_a_state_saved_for_other_metrics():
    other = VolatilityGuard([("loss", "min")])
    with pytest.raises(ValueError, match="saved state has metrics"):
        make_volatility().load_state_dict(other.state_dict())
