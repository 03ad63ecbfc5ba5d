"""The surface task's guards (`jaxguard/tasks/surface/guards.py`) on scripted runs."""

import json
import os

import numpy as np
import pytest

from jaxguard import config as config_lib
from jaxguard import guards as guards_lib
from jaxguard.tasks.surface import guards

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# ----------------------------------------------------------------------------- plateau guard


def _plateau(**overrides):
    settings = dict(patience=5, tolerance=0.1, start_within=10)
    return guards.PlateauGuard(**{**settings, **overrides})


def _run(guard, train, val, first_epoch=0):
    events = {}
    for epoch, (t, v) in enumerate(zip(train, val, strict=True), start=first_epoch):
        event = guard.update(epoch, {"train_loss": t, "loss": v})
        if event is not None:
            events[epoch] = event
    return events


def _seed_run(seed=0):
    """The seed's run: train loss 0.39-0.41 and val loss 0.40-0.42 for epochs 0 to 49."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.39, 0.41, 50), rng.uniform(0.40, 0.42, 50)


def test_plateau_guard_flags_the_seed_run_from_epoch_0_to_49():
    events = _run(_plateau(), *_seed_run())
    assert list(events) == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49]
    first, last = events[4], events[49]
    assert first.guard == "plateau" and first.level == "warn" and first.epoch == 4
    assert "from epoch 0 to 4 (5 epochs" in first.message
    assert "train loss stuck at 0.40" in last.message
    assert "from epoch 0 to 49 (50 epochs" in last.message
    assert "val loss at 0.41" in last.message


def test_plateau_guard_is_quiet_on_a_learning_run():
    epochs = np.arange(30)
    train = 0.45 * np.exp(-epochs / 6) + 0.05
    assert _run(_plateau(), train, train + 0.02) == {}


def test_plateau_guard_ignores_a_plateau_that_starts_late():
    # Converged after epoch 12: a flat tail is not a stuck start.
    train = np.concatenate([np.linspace(0.5, 0.2, 12), np.full(20, 0.2)])
    assert _run(_plateau(), train, train + 0.01) == {}


def test_plateau_guard_needs_both_losses_flat():
    train, _ = _seed_run()
    val = 0.3 + 0.6 * np.exp(-np.arange(10) / 3)  # validation still improving
    assert _run(_plateau(), train[:10], val) == {}


def test_plateau_after_an_early_drop_is_reported_from_where_it_starts():
    train = np.array([0.9, 0.7, 0.5, 0.40, 0.41, 0.40, 0.39, 0.40, 0.3])
    events = _run(_plateau(), train, train + 0.01)
    assert list(events) == [7]
    assert "from epoch 3 to 7" in events[7].message


def test_non_finite_losses_break_a_plateau():
    train, val = _seed_run()
    train[3] = np.nan
    events = _run(_plateau(), train[:10], val[:10])
    assert list(events) == [8]
    assert "from epoch 4 to 8" in events[8].message


def test_plateau_guard_resumes_from_its_json_state():
    train, val = _seed_run(1)
    uninterrupted = _run(_plateau(), train, val)
    guard = _plateau()
    before = _run(guard, train[:17], val[:17])
    state = json.loads(json.dumps(guard.state_dict()))
    resumed = _plateau()
    resumed.load_state_dict(state)
    after = _run(resumed, train[17:], val[17:], first_epoch=17)
    assert {k: v.message for k, v in {**before, **after}.items()} == {
        k: v.message for k, v in uninterrupted.items()
    }
    with pytest.raises(ValueError, match="tolerance"):
        _plateau(tolerance=0.2).load_state_dict(state)


def test_plateau_guard_checks_epochs_and_settings():
    guard = _plateau()
    guard.update(3, {"train_loss": 0.4, "loss": 0.4})
    with pytest.raises(ValueError, match="increase"):
        guard.update(3, {"train_loss": 0.4, "loss": 0.4})
    with pytest.raises(ValueError, match="tolerance"):
        _plateau(tolerance=-0.1)
    with pytest.raises(ValueError, match="patience"):
        _plateau(patience=1)


# ----------------------------------------------------------------------------- majority guard


def _majority(**overrides):
    settings = dict(prior=0.66, margin=0.05, patience=2, start_epoch=5)
    return guards.MajorityClassGuard(**{**settings, **overrides})


def _evaluation(fg_pred, precision, fg_true=0.65, dice=0.8):
    return {
        "fg_fraction_pred": fg_pred,
        "fg_fraction_true": fg_true,
        "precision": precision,
        "dice": dice,
    }


def _events(guard, evaluations, first_epoch=0):
    return {
        epoch: event
        for epoch, metrics in enumerate(evaluations, start=first_epoch)
        if (event := guard.update(epoch, metrics)) is not None
    }


def test_majority_guard_flags_all_foreground_after_the_warm_up():
    # All foreground: precision equals the true fraction, dice that of the baseline.
    stuck = _evaluation(0.99, 0.65, dice=2 * 0.65 / 1.65)
    events = _events(_majority(), [stuck] * 10)
    assert list(events) == [6, 8]  # from start_epoch 5, after 2 in a row, then every 2
    message = events[6].message
    assert events[6].guard == "majority_class" and events[6].level == "warn"
    assert "only foreground" in message and "predicted foreground fraction 0.990" in message
    assert "dice 0.788 vs 0.788 for predicting all foreground" in message


def test_majority_guard_flags_all_background():
    events = _events(_majority(start_epoch=0), [_evaluation(0.01, float("nan"))] * 2)
    assert "only background" in events[1].message


def test_majority_guard_flags_a_prediction_independent_of_the_labels():
    # Foreground at the prior's rate, no purer than a random pick.
    events = _events(_majority(start_epoch=0), [_evaluation(0.68, 0.66)] * 2)
    assert "independently of the labels" in events[1].message


def test_majority_guard_is_quiet_on_a_good_model_and_resets():
    good = _evaluation(0.66, 0.95, dice=0.93)
    stuck = _evaluation(0.99, 0.65)
    guard = _majority(start_epoch=0)
    assert _events(guard, [good, stuck, good, stuck, good] * 2) == {}


def test_majority_guard_resumes_from_its_json_state():
    stuck = _evaluation(0.99, 0.65)
    guard = _majority(start_epoch=0)
    guard.update(0, stuck)
    resumed = _majority(start_epoch=0)
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert resumed.update(1, stuck) is not None
    with pytest.raises(ValueError, match="prior"):
        _majority(prior=0.5).load_state_dict(guard.state_dict())


def test_make_guards_follows_the_config_and_the_training_prior():
    small = os.path.join(ROOT, "configs/surface.py:small")
    labels = np.zeros((4, 10), np.float32)
    labels[:, :7] = 1
    splits = {"train": {"labels": labels}}
    made = guards.make_guards(config_lib.load_config(small), splits)
    assert [guard.name for guard in made] == ["plateau", "majority_class"]
    assert all(isinstance(guard, guards_lib.Guard) for guard in made)
    assert made[1].prior == pytest.approx(0.7)
    off = config_lib.load_config(
        small, ["guard.plateau.enabled=False", "guard.majority_class.enabled=False"]
    )
    assert guards.make_guards(off, splits) == []


def test_guards_take_their_settings_from_their_guard_sections():
    small = os.path.join(ROOT, "configs/surface.py:small")
    config = config_lib.load_config(
        small,
        [
            "guard.plateau.patience=3",
            "guard.plateau.tolerance=0.2",
            "guard.plateau.start_within=4",
            "guard.majority_class.margin=0.1",
            "guard.majority_class.patience=3",
            "guard.majority_class.start_epoch=2",
        ],
    )
    plateau, majority = guards.make_guards(config, {"train": {"labels": np.ones((1, 2))}})
    assert (plateau.patience, plateau.tolerance, plateau.start_within) == (3, 0.2, 4)
    assert (majority.margin, majority.patience, majority.start_epoch) == (0.1, 3, 2)


@pytest.mark.parametrize(
    "old, new", [("plateau_guard", "plateau"), ("majority_guard", "majority_class")]
)
def test_old_guard_keys_name_their_new_section(old, new):
    small = os.path.join(ROOT, "configs/surface.py:small")
    with pytest.raises(config_lib.ConfigError, match=f"moved to guard.{new}.enabled") as error:
        config_lib.load_config(small, [f"loss.{old}.enabled=False"])
    assert "\n" not in str(error.value)


def test_hooks_of_the_guard_protocol_call_update():
    train, val = _seed_run()
    direct = _run(_plateau(), train, val)
    hooked_guard = _plateau()
    hooked = {}
    for epoch, (t, v) in enumerate(zip(train, val, strict=True)):
        evaluation = guards_lib.Evaluation(epoch, {"train_loss": t, "loss": v, "dice": 0.5})
        if (event := hooked_guard.on_evaluation(evaluation)) is not None:
            hooked[epoch] = event
    assert {k: e.message for k, e in hooked.items()} == {k: e.message for k, e in direct.items()}
    stuck = _evaluation(0.99, 0.65)
    majority = _majority(start_epoch=0)
    events = [majority.on_evaluation(guards_lib.Evaluation(epoch, stuck)) for epoch in range(2)]
    assert events[0] is None and events[1].guard == "majority_class"


def test_guards_name_the_metrics_they_read_when_missing():
    _plateau().check_metrics({"loss", "train_loss", "dice"})
    with pytest.raises(ValueError, match="reads metric train_loss") as error:
        _plateau().check_metrics({"loss", "dice"})
    assert "\n" not in str(error.value)
    available = {"dice", "precision", "fg_fraction_pred", "fg_fraction_true", "loss"}
    _majority().check_metrics(available)
    with pytest.raises(ValueError, match="reads metric precision"):
        _majority().check_metrics(available - {"precision"})
    # Through the collection, the error names the guard's section.
    collection = guards_lib.GuardCollection([_plateau(), _majority()])
    with pytest.raises(ValueError, match="^guard.majority_class: reads metric fg_fraction_true"):
        collection.check_metrics(available - {"fg_fraction_true"} | {"train_loss"})
