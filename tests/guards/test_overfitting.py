"""OverfittingGuard: val loss climbs away from its best while train loss falls (seed 004).

Each case fires on a scripted sequence shaped like the seed failure, stays silent on a healthy
one, and a guard resumed from its JSON state mid-sequence reports what the uninterrupted one does.
"""

from guard_sequences import feed, messages, resumed_events

from jaxguard.guards import OverfittingGuard

# Seed 004: best val loss 0.606 at epoch 10, then up to 1.5 while train loss falls to 0.1.
OVERFIT = [{"loss": 1.2 - 0.06 * e, "train_loss": 1.0 - 0.05 * e} for e in range(11)] + [
    {"loss": 0.606 * (1 + 0.1 * k), "train_loss": 0.5 - 0.04 * k} for k in range(1, 10)
]


def make_overfitting():
    return OverfittingGuard("loss", rise=0.2, patience=3, start_epoch=1)


def test_overfitting_warns_once_val_loss_stays_20_percent_above_its_best_with_train_falling():
    events = feed(make_overfitting(), OVERFIT)
    # The best is 0.6 (epoch 10); above 0.6 * 1.2 = 0.72 from k = 2 (0.727, epoch 12), so the
    # third such evaluation is epoch 14.
    assert [(event.level, event.epoch) for event in events] == [("warn", 14)]
    assert "its best 0.6 (epoch 10)" in events[0].message
    assert "epoch 10 checkpoint is the one to keep" in events[0].message


def test_overfitting_is_silent_when_train_loss_rises_too_or_val_loss_keeps_falling():
    both_rise = [{"loss": 1.0 + 0.2 * e, "train_loss": 1.0 + 0.1 * e} for e in range(10)]
    assert feed(make_overfitting(), both_rise) == []
    falling = [{"loss": 1.0 / (1 + e), "train_loss": 1.0 / (1 + 2 * e)} for e in range(10)]
    assert feed(make_overfitting(), falling) == []


def test_overfitting_resumes_exactly():
    for cut in (5, 12, 14):
        assert messages(resumed_events(make_overfitting, OVERFIT, cut)) == messages(
            feed(make_overfitting(), OVERFIT)
        )


def test_overfitting_ignores_a_noisy_val_loss_while_train_loss_only_wobbles():
    # The optical-depth default, seed 0, epochs 3-6: val loss 39% above its best while the
    # training loss fell from 0.1406 to 0.1395 (0.8%): noise, not memorisation.
    history = [(0.0745, 0.1406), (0.1003, 0.1241), (0.0962, 0.1149), (0.1033, 0.1395)]
    sequence = [{"loss": 0.2, "train_loss": 0.3}] * 3 + [
        {"loss": val, "train_loss": train} for val, train in history
    ]
    assert feed(make_overfitting(), sequence) == []
    # With any fall at all counting (train_drop 0) the same run would warn.
    loose = OverfittingGuard("loss", rise=0.2, patience=3, start_epoch=1, train_drop=0.0)
    assert [event.epoch for event in feed(loose, sequence)] == [6]
