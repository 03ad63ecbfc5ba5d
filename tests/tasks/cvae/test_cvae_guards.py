"""The cVAE task's guards (`jaxguard/tasks/cvae/guards.py`): posterior collapse and volatility."""

import json
import os

import pytest

from jaxguard import config as config_lib
from jaxguard import guards
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.guards import ActiveUnitsGuard, VolatilityGuard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "cvae.py:small")


def test_active_units_guard_warns_once_and_reports_recovery():
    guard = ActiveUnitsGuard(d_z=16, min_fraction=0.25, activity_threshold=0.01, start_epoch=1)
    assert guard.update(0, {"active_units": 0.0, "kl": 0.0}) is None  # before start_epoch
    event = guard.update(1, {"active_units": 3.0, "kl": 0.02})
    assert event.level == "warn" and event.guard == "active_units"
    assert "3 of 16 latent units" in event.message
    assert guard.update(2, {"active_units": 2.0, "kl": 0.01}) is None
    restored = ActiveUnitsGuard(d_z=16, min_fraction=0.25, activity_threshold=0.01, start_epoch=1)
    restored.load_state_dict(guard.state_dict())
    assert restored.update(3, {"active_units": 4.0, "kl": 0.5}).level == "info"


def test_volatility_guard_warns_on_a_jump_of_the_reconstruction_loss():
    guard = VolatilityGuard(warn_change=1.0)
    # Seed 002's figures: val_L_rec 2.1301 at epoch 5, 6.5455 later.
    assert guard.update(5, {"rec_loss": 2.1301}) is None
    assert guard.update(6, {"rec_loss": 2.5}) is None
    # A resumed run restores the state from the checkpoint's JSON metadata.
    saved = json.loads(json.dumps(guard.state_dict()))
    guard = VolatilityGuard(warn_change=1.0)
    guard.load_state_dict(saved)
    event = guard.update(7, {"rec_loss": 6.5455})
    assert event.level == "warn" and "+162%" in event.message and "epoch 6 (2.5)" in event.message
    assert event.guard == "volatility"


def test_hooks_run_the_update_on_each_evaluation():
    collapse = ActiveUnitsGuard(d_z=4, min_fraction=0.5, activity_threshold=0.01, start_epoch=0)
    event = collapse.on_evaluation(guards.Evaluation(2, {"active_units": 1.0, "kl": 0.1}))
    assert event.level == "warn" and event.epoch == 2
    volatility = VolatilityGuard(warn_change=0.5)
    assert volatility.on_evaluation(guards.Evaluation(0, {"rec_loss": 1.0})) is None
    event = volatility.on_evaluation(guards.Evaluation(1, {"rec_loss": 2.0}))
    assert event.level == "warn" and "+100%" in event.message and event.epoch == 1


def test_guards_come_from_their_config_sections():
    config = config_lib.load_config(SMALL)
    splits = TASK.make_splits(config)
    built = TASK.guards(config, splits)
    assert [guard.name for guard in built] == ["active_units", "volatility"]
    assert [guard.name for guard in built] == list(TASK.guard_names)
    active, volatility = built
    assert (active.d_z, active.min_fraction, active.activity_threshold) == (4, 0.25, 0.01)
    assert active.start_epoch == 0 and volatility.warn_change == 1.0
    # The harness's collection takes them and finds every metric they read.
    collection = guards.GuardCollection.from_config(config.guard, built)
    available = set(TASK.empty_metrics(config).compute()) | {"loss", "train_loss"}
    collection.check_metrics(available)
    quiet = config_lib.load_config(
        SMALL, ["guard.active_units.enabled=False", "guard.volatility.warn_change=0.0"]
    )
    assert TASK.guards(quiet, splits) == []


@pytest.mark.parametrize(
    "guard",
    [
        ActiveUnitsGuard(d_z=4, min_fraction=0.25, activity_threshold=0.01, start_epoch=0),
        VolatilityGuard(warn_change=1.0),
    ],
)
def test_a_missing_metric_fails_before_training(guard):
    with pytest.raises(ValueError, match=r"reads metric .*which the run does not compute"):
        guard.check_metrics({"loss", "train_loss", "mae_all"})
