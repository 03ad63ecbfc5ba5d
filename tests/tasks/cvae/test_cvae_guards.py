"""The cVAE task's guard (`jaxguard/tasks/cvae/guards.py`): posterior collapse; the shared
volatility guard on the reconstruction loss; the ensemble-spread guard on the cVAE's members."""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import guards
from jaxguard.guards import EnsembleSpreadGuard, Evaluation
from jaxguard.tasks.cvae import TASK
from jaxguard.tasks.cvae.guards import ActiveUnitsGuard
from jaxguard.tasks.cvae.metrics import CVAEMetrics

THRESHOLD = 50.0

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


def test_hooks_run_the_update_on_each_evaluation():
    collapse = ActiveUnitsGuard(d_z=4, min_fraction=0.5, activity_threshold=0.01, start_epoch=0)
    event = collapse.on_evaluation(guards.Evaluation(2, {"active_units": 1.0, "kl": 0.1}))
    assert event.level == "warn" and event.epoch == 2


def test_guards_come_from_their_config_sections():
    config = config_lib.load_config(SMALL)
    splits = TASK.make_splits(config)
    built = TASK.guards(config, splits)
    assert [guard.name for guard in built] == ["active_units"]
    assert [guard.name for guard in built] == list(TASK.guard_names)
    (active,) = built
    assert (active.d_z, active.min_fraction, active.activity_threshold) == (4, 0.25, 0.01)
    assert active.start_epoch == 0
    # The harness's collection takes them and finds every metric they read; the shared
    # volatility guard watches the reconstruction loss beside the monitor.
    collection = guards.GuardCollection.from_config(config.guard, built)
    available = set(TASK.empty_metrics(config).compute()) | {"loss", "train_loss"}
    collection.check_metrics(available)
    assert collection["volatility"].metrics == (("mae_all", "min"), ("rec_loss", "min"))
    quiet = config_lib.load_config(SMALL, ["guard.active_units.enabled=False"])
    assert TASK.guards(quiet, splits) == []


@pytest.mark.parametrize(
    "guard",
    [
        ActiveUnitsGuard(d_z=4, min_fraction=0.25, activity_threshold=0.01, start_epoch=0),
        guards.VolatilityGuard([("rec_loss", "min")]),
    ],
)
def test_a_missing_metric_fails_before_training(guard):
    with pytest.raises(ValueError, match=r"reads metric .*which the run does not compute|unknown"):
        guard.check_metrics({"loss", "train_loss", "mae_all"})


# ----------------------------------------------------------------------------- ensemble spread


@nnx.jit(static_argnums=3)
def _prior_members(model, y, key, members):
    condition_map, condition_vector = model.condition(y)
    prior_mean, prior_logvar = model.prior_params(condition_vector)
    return model.prior_members(
        prior_mean, prior_logvar, condition_map, condition_vector, members, key
    )


def _spread_events(model, y, truth_of, evaluations=3, members=8):
    """Ensemble-spread guard events over `evaluations` draws of `members` per day."""
    guard = EnsembleSpreadGuard(members=members, start_epoch=0)
    events, figures = [], []
    for epoch in range(evaluations):
        fields = _prior_members(model, y, jax.random.key(epoch), members + 1)
        truth, ensemble = truth_of(fields), fields[:, 1:]
        metrics = CVAEMetrics.ensemble_only(members, THRESHOLD).update_ensemble(ensemble, truth)
        figures.append(metrics.ensemble_figures())
        events.append(guard.on_evaluation(Evaluation(epoch, figures[-1])))
    return events, figures


def test_ensemble_guard_is_silent_when_the_truth_is_a_draw_of_the_model_itself(setup):
    # The small default model (decoder noise on): a day drawn from the model is exchangeable
    # with its members, so the ensemble is calibrated for it by construction.
    config, splits, model, _, _ = setup
    model.eval()
    y = jnp.asarray(splits["val"]["y"])
    events, figures = _spread_events(model, y, truth_of=lambda fields: fields[:, 0])
    assert events == [None, None, None]
    for figure in figures:
        assert 0.8 < figure["spread_skill"] < 1.2
        assert figure["rank_low"] < 2 / 9 and figure["rank_high"] < 2 / 9


def test_ensemble_guard_stops_a_model_without_decoder_noise_within_two_evaluations(setup):
    # :mean_only's architecture (z alone drives the members) against the real truth.
    config = config_lib.load_config(SMALL, ["model.noise_channels=0"])
    splits = setup[1]
    model = TASK.make_model(config, splits, nnx.Rngs(0, dropout=1))
    model.eval()
    y, truth = jnp.asarray(splits["val"]["y"]), jnp.asarray(splits["val"]["x"])
    events, figures = _spread_events(model, y, truth_of=lambda fields: truth, evaluations=2)
    assert figures[0]["spread_skill"] < 0.3
    assert events[0].level == "warn" and events[1].level == "stop"
    assert events[1].message.startswith("ensemble collapse: spread_skill")
