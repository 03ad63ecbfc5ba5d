"""benchmarks.zoo's judging of runs: onset, the catching event, false alarms (no training)."""

import pytest

from benchmarks import zoo


def record(history, events=(), test=None, spec="configs/x.py:failure", best_epoch=0):
    rows = tuple({"epoch": float(epoch), **row} for epoch, row in enumerate(history))
    return zoo.RunRecord(
        spec=spec,
        seed=0,
        workdir="/nowhere",
        config={"loss": {"beta_warmup_epochs": 10.0}},
        summary={"best_epoch": best_epoch, "test": test or {"pixel_error_mean": 1.0}},
        history=rows,
        events=tuple(events),
        seconds=1.0,
    )


def event(guard, level, epoch, message="m"):
    return {"guard": guard, "level": level, "epoch": epoch, "step": 10 * epoch, "message": message}


OVERFITTING_ROW = next(row for row in zoo.ZOO if row.name == "overfitting past the best epoch")


def test_overfit_onset_is_the_first_epoch_10_percent_above_the_best_with_train_lower():
    history = [
        {"val_loss": 1.0, "train_loss": 1.0},
        {"val_loss": 0.6, "train_loss": 0.8},
        {"val_loss": 0.65, "train_loss": 0.7},  # 8% above: not yet
        {"val_loss": 0.7, "train_loss": 0.9},  # above, but train loss rose past 0.8
        {"val_loss": 0.7, "train_loss": 0.5},
    ]
    assert zoo.overfit_onset(record(history)) == 4


def test_judge_counts_evaluations_from_onset_to_the_first_catching_event():
    history = [{"val_loss": v, "train_loss": t} for v, t in [(1, 1), (0.6, 0.8), (0.7, 0.6)]] + [
        {"val_loss": 0.8, "train_loss": 0.5}
    ] * 4
    failure = record(
        history,
        events=[event("volatility", "warn", 1), event("overfitting", "warn", 5, "overfit!")],
        test={"loss": 12.0},
    )
    twin = record(
        history[:3],
        events=[event("early_stopping", "stop", 2), event("collapse", "warn", 1)],
        test={"loss": 6.0},
    )
    result = zoo.judge(OVERFITTING_ROW, failure, twin)
    assert result["reproduced"] and result["onset_epoch"] == 2
    assert (result["caught_by"], result["caught_epoch"]) == ("overfitting", 5)
    assert result["evaluations_after_onset"] == 3 and result["caught_in_time"]
    # Early stopping's own stop is not an alarm; the collapse warning is.
    assert result["twin_alarms"] == ["collapse warn @ 1"]
    late = record(history, events=[event("overfitting", "warn", 6)], test={"loss": 12.0})
    assert not zoo.judge(OVERFITTING_ROW, late, twin)["caught_in_time"]


def test_largest_jump_and_kl_weight_at_best():
    assert zoo.largest_jump([2.13, 6.55, 3.0]) == pytest.approx(6.55 / 2.13 - 1)
    assert zoo.largest_jump([3.0, 2.0, 1.0]) == 0.0
    assert zoo.kl_weight_at_best(record([{}], best_epoch=4)) == pytest.approx(0.5)
    assert zoo.kl_weight_at_best(record([{}], best_epoch=30)) == 1.0


def test_every_row_names_a_failure_config_a_twin_and_guards():
    names = [row.name for row in zoo.ZOO]
    assert len(names) == len(set(names)) == 9
    for row in zoo.ZOO:
        assert row.guards
        if row.missing:  # Reported, not run: no config to point at.
            assert row.failure == row.twin == ""
        else:
            assert row.failure != row.twin and row.failure.startswith("configs/")
