"""GuardCollection: the fixed order, the checks on its guards, dispatch and the saved state."""

import json

import optax
import pytest

from jaxguard.configs.base import get_config
from jaxguard.guards.base import Evaluation, Guard, GuardEvent, StepInfo
from jaxguard.guards.best import BestCheckpoint
from jaxguard.guards.collapse import CollapseGuard
from jaxguard.guards.collection import GuardCollection
from jaxguard.guards.early_stopping import EarlyStopping
from jaxguard.guards.ensemble import EnsembleSpreadGuard
from jaxguard.guards.nonfinite import NonFiniteGuard


class Recorder(Guard):
    """Logs every hook call to a shared list; returns the events it is given, by step/epoch."""

    def __init__(self, name, log, events=None, needs=()):
        self.name = name
        self.log = log
        self.events = events or {}
        self.needs = set(needs)
        self.calls = 0

    def on_step(self, info):
        self.log.append((self.name, "step", info.step))
        self.calls += 1
        return self.events.get(("step", info.step))

    def on_evaluation(self, evaluation):
        self.log.append((self.name, "evaluation", evaluation.epoch))
        self.calls += 1
        return self.events.get(("evaluation", evaluation.epoch))

    def check_metrics(self, available):
        missing = self.needs - set(available)
        if missing:
            raise ValueError(f"needs the metric {', '.join(sorted(missing))}")

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _config():
    return get_config().guard


def test_from_config_order_nonfinite_spread_guards_task_guards_early_stopping():
    config = _config()
    config.collapse.enabled = config.ensemble_spread.enabled = True
    config.disagreement.quality = ("r2:max",)
    log = []
    task_guards = [Recorder("zeta", log), Recorder("alpha", log)]
    weights = {"mae": 1.0, "kl": optax.linear_schedule(0.0, 0.1, 100)}
    collection = GuardCollection.from_config(
        config, task_guards, loss_weights=weights, steps_per_epoch=10, last_epoch=19
    )
    assert collection.names == (
        "nonfinite",
        "loss_terms",
        "collapse",
        "ensemble_spread",
        "zeta",
        "alpha",
        "volatility",
        "disagreement",
        "overfitting",
        "early_stopping",
        "warmup",
    )
    assert collection["warmup"].early_stopping is collection["early_stopping"]
    assert [(ramp.term, ramp.end_epoch) for ramp in collection["warmup"].ramps] == [("kl", 10)]
    assert collection["volatility"].metrics == (("loss", "min"),)
    assert isinstance(collection["nonfinite"], NonFiniteGuard)
    assert isinstance(collection["collapse"], CollapseGuard)
    assert isinstance(collection["ensemble_spread"], EnsembleSpreadGuard)
    assert collection["ensemble_spread"].members == config.ensemble_spread.members
    assert collection["zeta"] is task_guards[0] and collection["alpha"] is task_guards[1]
    assert isinstance(collection["early_stopping"], EarlyStopping)
    assert collection["early_stopping"].patience == config.early_stopping.patience


def test_from_config_leaves_out_the_disabled_guards():
    config = _config()
    assert config.collapse.enabled is False  # The shared defaults.
    assert config.ensemble_spread.enabled is False
    assert GuardCollection.from_config(config).names == (
        "nonfinite",
        "volatility",
        "overfitting",
        "early_stopping",
    )
    for name in ("volatility", "overfitting", "early_stopping"):
        config[name].enabled = False
    assert GuardCollection.from_config(config).names == ("nonfinite",)
    config.early_stopping.enabled = False
    collection = GuardCollection.from_config(config, [Recorder("task", [])])
    assert collection.names == ("nonfinite", "task")
    assert "early_stopping" not in collection and "task" in collection
    with pytest.raises(KeyError, match="no guard named 'early_stopping'; guards: nonfinite, task"):
        collection["early_stopping"]


def test_two_guards_with_one_name_are_rejected():
    with pytest.raises(ValueError, match="two guards are named 'a'"):
        GuardCollection([Recorder("a", []), Recorder("b", []), Recorder("a", [])])
    config = _config()
    config.collapse.enabled = True
    with pytest.raises(ValueError, match="two guards are named 'collapse'"):
        GuardCollection.from_config(config, [Recorder("collapse", [])])


def test_only_named_guards_are_accepted():
    class DuckTyped:  # Has the hooks but is not a Guard.
        name = "duck"

        def on_evaluation(self, evaluation):
            return None

    for not_a_guard in (DuckTyped(), BestCheckpoint("loss"), "nonfinite"):
        with pytest.raises(TypeError, match="is not a jaxguard.guards.Guard; subclass it"):
            GuardCollection([Recorder("a", []), not_a_guard])
    with pytest.raises(ValueError, match="Guard has no `name`"):
        GuardCollection([Guard()])


def test_every_guard_runs_in_order_and_their_events_come_back_in_order():
    log = []
    stop = GuardEvent("first", "stop", "stop at step 2", step=2)
    warn = GuardEvent("third", "warn", "warn at step 2", step=2)
    info = GuardEvent("second", "info", "info at epoch 0", epoch=0)
    collection = GuardCollection(
        [
            Recorder("first", log, {("step", 2): stop}),
            Recorder("second", log, {("evaluation", 0): info}),
            Recorder("third", log, {("step", 2): warn}),
        ]
    )
    assert collection.on_step(StepInfo(1, 0, {})) == []
    # A stop from the first guard does not keep the later ones from running.
    assert collection.on_step(StepInfo(2, 0, {})) == [stop, warn]
    assert collection.on_evaluation(Evaluation(0, {"loss": 1.0})) == [info]
    assert log == [
        ("first", "step", 1),
        ("second", "step", 1),
        ("third", "step", 1),
        ("first", "step", 2),
        ("second", "step", 2),
        ("third", "step", 2),
        ("first", "evaluation", 0),
        ("second", "evaluation", 0),
        ("third", "evaluation", 0),
    ]


def _feed(collection, first_epoch, ratios):
    """One logging step and one evaluation per epoch; the events by epoch."""
    events = {}
    for epoch, ratio in enumerate(ratios, start=first_epoch):
        scalars = {"loss": 1.0, "nonfinite/consecutive": 0, "nonfinite/total": epoch}
        step_events = collection.on_step(StepInfo(10 * (epoch + 1), epoch, scalars))
        metrics = {"loss": 1.0 - 0.01 * epoch, "std_ratio": ratio, "train_loss": 1.0}
        events[epoch] = step_events + collection.on_evaluation(Evaluation(epoch, metrics))
    return events


def _built(config):
    return GuardCollection.from_config(config, [Recorder("task", [])])


def test_state_round_trip_resumes_every_guard():
    config = _config()
    config.collapse.enabled = True
    ratios = [0.9, 0.3, 0.3, 0.05, 0.05, 0.05]
    uninterrupted = _built(config)
    expected = _feed(uninterrupted, 0, ratios)
    first = _built(config)
    head = _feed(first, 0, ratios[:3])
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert set(saved) == {
        "nonfinite",
        "collapse",
        "task",
        "volatility",
        "overfitting",
        "early_stopping",
    }
    assert saved["task"] == {"calls": 6}
    resumed = _built(config)
    resumed.load_state_dict(saved)
    assert {**head, **_feed(resumed, 3, ratios[3:])} == expected
    assert resumed.state_dict() == uninterrupted.state_dict()
    # The scripted run warns (new skips, low spread) and the collapse guard stops it.
    assert [(e.guard, e.level) for e in expected[1]] == [
        ("nonfinite", "warn"),
        ("collapse", "warn"),
    ]
    assert [(e.guard, e.level) for e in expected[5]] == [
        ("nonfinite", "warn"),
        ("collapse", "stop"),
    ]


def test_a_guard_missing_from_the_saved_state_is_named():
    config = _config()
    saved = _built(config).state_dict()
    config.collapse.enabled = True
    with pytest.raises(ValueError, match="holds no state for guard collapse; it was saved by"):
        _built(config).load_state_dict(saved)


def test_check_metrics_prefixes_the_guard_section():
    config = _config()
    config.early_stopping.monitor = "loss - r3"
    collection = GuardCollection.from_config(config, [Recorder("task", [], needs=["r2"])])
    # Early stopping is checked first: the volatility guard reads the same monitor, and the
    # key to fix is early stopping's.
    with pytest.raises(ValueError, match=r"^guard\.early_stopping: monitor 'loss - r3': unknown"):
        collection.check_metrics(["loss", "train_loss"])
    config.early_stopping.monitor = "loss"
    collection = GuardCollection.from_config(config, [Recorder("task", [], needs=["r2"])])
    with pytest.raises(ValueError, match=r"^guard\.task: needs the metric r2$"):
        collection.check_metrics(["loss", "train_loss"])
    config.early_stopping.monitor = "loss - r2"
    GuardCollection.from_config(config, [Recorder("task", [], needs=["r2"])]).check_metrics(
        iter(["loss", "r2", "train_loss"])  # Any iterable, read once per guard.
    )


def test_volatility_starts_with_early_stopping_and_not_before_epoch_2():
    config = _config()
    assert GuardCollection.from_config(config)["volatility"].start_epoch == 2
    config.early_stopping.start_epoch = 4
    assert GuardCollection.from_config(config)["volatility"].start_epoch == 4
    config.volatility.start_epoch = 0
    assert GuardCollection.from_config(config)["volatility"].start_epoch == 0


def test_overfitting_starts_with_early_stopping_and_not_before_epoch_1():
    config = _config()
    assert GuardCollection.from_config(config)["overfitting"].start_epoch == 1
    config.early_stopping.start_epoch = 4  # The optical-depth default: early swings ignored.
    assert GuardCollection.from_config(config)["overfitting"].start_epoch == 4
    config.early_stopping.enabled = False
    assert GuardCollection.from_config(config)["overfitting"].start_epoch == 1
    config.overfitting.start_epoch = 0
    assert GuardCollection.from_config(config)["overfitting"].start_epoch == 0
