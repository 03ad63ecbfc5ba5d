"""WarmupGuard and weight_ramps: the best checkpoint inside an unfinished warm-up (seed 002).

Each case fires on a scripted sequence shaped like the seed failure, stays silent on a healthy
one, and a guard resumed from its JSON state mid-sequence reports what the uninterrupted one does.
"""

import json

import optax
import pytest

from jaxguard.guards import EarlyStopping, Evaluation, WarmupGuard, weight_ramps


def test_weight_ramps_find_the_end_of_a_linear_warm_up_in_epochs():
    weights = {
        "mae": 1.0,
        "kl": optax.linear_schedule(0.0, 0.1, 300),
        "lr": optax.cosine_decay_schedule(1.0, 100),
    }
    (ramp,) = weight_ramps(weights, steps_per_epoch=10)
    assert (ramp.term, ramp.final, ramp.end_epoch) == ("kl", pytest.approx(0.1), 30)
    # The weight at the last step of epoch 4 (step 49): 0.1 * 49 / 300.
    assert ramp.at_epoch(4) == pytest.approx(0.1 * 49 / 300)


def make_warmup(patience, start_epoch=0):
    stop = EarlyStopping("rec_loss", "min", patience=patience, start_epoch=start_epoch)
    ramps = weight_ramps({"kl": optax.linear_schedule(0.0, 0.1, 300)}, steps_per_epoch=10)
    return stop, WarmupGuard(ramps, stop, last_epoch=99)


def feed_both(stop, warmup, values):
    events = []
    for epoch, value in enumerate(values):
        evaluation = Evaluation(epoch, {"rec_loss": value})
        for guard in (stop, warmup):
            event = guard.on_evaluation(evaluation)
            if event is not None:
                events.append(event)
    return events


def test_warmup_warns_when_patience_can_end_the_run_inside_the_warm_up():
    # Seed 002: warm-up over 30 epochs, patience 20, the best from epoch 5.
    stop, warmup = make_warmup(patience=20)
    values = [5.0, 4.0, 3.5, 3.0, 2.5, 2.1] + [2.2] * 4
    events = [event for event in feed_both(stop, warmup, values) if event.guard == "warmup"]
    assert [(event.level, event.epoch) for event in events] == [("warn", 0)]
    assert "(epoch 0) has kl weight 0.003, 3% of its final 0.1" in events[0].message
    assert "the run ends at epoch 20, before the kl warm-up ends at epoch 30" in events[0].message


def test_warmup_is_silent_when_patience_outlasts_the_warm_up_or_starts_after_it():
    stop, warmup = make_warmup(patience=31)
    assert [e for e in feed_both(stop, warmup, [3.0, 2.0, 1.0]) if e.guard == "warmup"] == []
    stop, warmup = make_warmup(patience=5, start_epoch=30)
    values = [3.0 - 0.05 * e for e in range(40)]
    assert [e for e in feed_both(stop, warmup, values) if e.guard == "warmup"] == []


def test_warmup_warns_again_only_after_the_condition_cleared():
    stop, warmup = make_warmup(patience=20)
    # Best at epoch 0 (warn), then improvements until epoch 12: 12 + 20 >= 30, cleared; the
    # best stays at 12 while the epochs go on, and the warning does not come back.
    values = [3.0 - 0.1 * e for e in range(13)] + [3.0] * 5
    events = [event for event in feed_both(stop, warmup, values) if event.guard == "warmup"]
    assert [event.epoch for event in events] == [0]
    saved = json.loads(json.dumps(warmup.state_dict()))
    assert saved == {"warned": {"kl": False}}
