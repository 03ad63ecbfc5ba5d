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


def test_overfitting_ignores_the_early_swings_before_early_stopping_starts():
    # The optical-depth default, seed 0, epochs 3-6: val loss 39% above its best while the
    # training loss, still learning, fell 18% and came back. The collection starts the guard
    # with early stopping (epoch 4 there: "val R² swings by ~0.1 in the first epochs").
    history = [(0.0745, 0.1406), (0.1003, 0.1241), (0.0962, 0.1149), (0.1033, 0.1395)]
    sequence = [{"loss": 0.2, "train_loss": 0.3}] * 3 + [
        {"loss": val, "train_loss": train} for val, train in history
    ]
    late = OverfittingGuard("loss", rise=0.2, patience=3, start_epoch=4)
    assert feed(late, sequence) == []
    assert [event.epoch for event in feed(make_overfitting(), sequence)] == [6]


def test_overfitting_sees_through_a_training_loss_that_swings_between_epochs():
    # `pointer:overfit`, seed 0 (log.csv, epochs 0-21): the done term at 3% positives swings
    # the epoch's training loss 2x while val loss leaves its best (3.93, epoch 9) for good
    # at epoch 18. Epoch 19's training loss (6.11) is above the best's (3.34): comparing the
    # current one would restart the count there, the lowest since the best (2.85) does not.
    val = [4.06, 4.06, 4.05, 4.04, 4.04, 4.03, 4.01, 4.01, 3.98, 3.93, 3.95, 4.21, 4.02, 4.64]
    val += [4.83, 3.97, 4.19, 4.41, 7.06, 6.60, 5.39, 5.34]
    train = [4.20, 4.14, 4.15, 4.12, 3.79, 4.11, 4.12, 3.77, 4.03, 3.34, 4.00, 3.52, 3.96, 4.08]
    train += [4.74, 3.61, 3.29, 3.57, 2.85, 6.11, 4.26, 3.04]
    sequence = [{"loss": v, "train_loss": t} for v, t in zip(val, train, strict=True)]
    events = feed(make_overfitting(), sequence)
    assert [event.epoch for event in events] == [20]
    assert "fell from 3.34 to 2.85 (now 4.26)" in events[0].message
    for cut in (10, 18, 19):
        assert messages(resumed_events(make_overfitting, sequence, cut)) == messages(events)
