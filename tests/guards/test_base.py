"""The guard protocol: the no-op `Guard`, `GuardEvent`, the shared argument checks."""

import dataclasses
import importlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard import guards
from jaxguard.guards.base import (
    Evaluation,
    Guard,
    GuardEvent,
    StepInfo,
    check_advance,
    check_count,
    check_state_matches,
    format_figure,
)


def test_guard_base_hooks_do_nothing_and_return_none():
    guard = Guard()
    assert Guard.name == ""
    assert guard.on_step(StepInfo(step=1, epoch=0, scalars={"loss": float("nan")})) is None
    assert guard.on_evaluation(Evaluation(epoch=0, metrics={"loss": 1.0})) is None
    assert guard.check_metrics([]) is None
    assert guard.state_dict() == {}
    assert guard.load_state_dict({"anything": 1}) is None


def test_a_subclass_overrides_only_the_hooks_it_needs():
    class EveryEvaluation(Guard):
        name = "every"

        def on_evaluation(self, evaluation):
            return GuardEvent(self.name, "info", "seen", evaluation.epoch)

    guard = EveryEvaluation()
    assert guard.on_step(StepInfo(3, 0, {})) is None
    assert guard.on_evaluation(Evaluation(2, {})) == GuardEvent("every", "info", "seen", epoch=2)
    assert guard.state_dict() == {}


@pytest.mark.parametrize("level", ["info", "warn", "stop"])
def test_guard_event_accepts_the_three_levels(level):
    event = GuardEvent("early_stopping", level, "message")
    assert (event.guard, event.level, event.message) == ("early_stopping", level, "message")
    assert event.epoch is None and event.step is None


@pytest.mark.parametrize("level", ["error", "STOP", "", None])
def test_guard_event_rejects_any_other_level(level):
    with pytest.raises(ValueError, match=r"GuardEvent: `level` must be one of .*'info'.*got"):
        GuardEvent("collapse", level, "message")


def test_guard_event_is_frozen():
    event = GuardEvent("nonfinite", "warn", "message", step=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.level = "stop"


def test_check_count_takes_python_numpy_and_jax_integers():
    assert check_count("Owner", "n", 3, 1) == 3
    assert check_count("Owner", "n", np.int64(3), 1) == 3
    assert check_count("Owner", "n", jnp.asarray(3), 1) == 3
    assert type(check_count("Owner", "n", np.int32(0), 0)) is int


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_check_count_rejects_non_integers(value):
    with pytest.raises(TypeError, match=r"Owner: `n` must be an integer, got"):
        check_count("Owner", "n", value, 0)


def test_check_count_rejects_values_below_the_minimum():
    with pytest.raises(ValueError, match=r"^Owner: `patience` must be >= 1, got 0\.$"):
        check_count("Owner", "patience", 0, 1)


def test_check_advance_requires_a_later_value_and_no_stop():
    assert check_advance("Owner", "epoch", 4, last=3, stopped=None) == 4
    assert check_advance("Owner", "epoch", 0, last=None, stopped=None) == 0
    with pytest.raises(ValueError, match="`epoch` must increase from update to update, got 3"):
        check_advance("Owner", "epoch", 3, last=3, stopped=None)
    with pytest.raises(RuntimeError, match="stopped at epoch 5; update.. called again at epoch 6"):
        check_advance("Owner", "epoch", 6, last=5, stopped=5)


def test_check_state_matches_names_the_differing_setting():
    state = {"monitor": "loss", "mode": "min"}
    check_state_matches("Owner", state, monitor="loss", mode="min")
    with pytest.raises(ValueError, match="Owner: the saved state has mode 'min' but this guard"):
        check_state_matches("Owner", state, monitor="loss", mode="max")


def test_format_figure_gives_four_significant_figures():
    assert format_figure(0.123456) == "0.1235"
    assert format_figure(-250.0) == "-250"
    assert format_figure(12345.6) == "1.235e+04"
    assert format_figure(float("nan")) == "nan"


@pytest.mark.parametrize(
    "module, names",
    [
        ("base", ["Evaluation", "Guard", "GuardEvent", "StepInfo", "check_count"]),
        ("best", ["BestCheckpoint"]),
        ("collapse", ["CollapseGuard", "collapse_diagnostics"]),
        ("collection", ["GuardCollection"]),
        ("early_stopping", ["EarlyStopping", "warmup_vs_early_stopping_warning"]),
        ("ensemble", ["EnsembleSpreadGuard"]),
        ("monitor", ["MonitorExpression"]),
        ("nonfinite", ["NonFiniteGuard"]),
    ],
)
def test_the_package_re_exports_each_module_s_public_names(module, names):
    source = importlib.import_module(f"jaxguard.guards.{module}")
    for name in names:
        assert getattr(guards, name) is getattr(source, name)
