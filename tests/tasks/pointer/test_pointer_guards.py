"""The pointer task's guards (`jaxguard/tasks/pointer/guards.py`)."""

import jax.numpy as jnp
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard.guards import Evaluation, Guard, GuardCollection, StepInfo
from jaxguard.tasks.pointer import TASK, guards, metrics, model


def _by_name(config, splits):
    return {guard.name: guard for guard in guards.make_guards(config, splits)}


def test_done_guard_fires_on_a_model_that_always_says_no(small):
    config, splits = small
    net = model.make_model(config, splits, nnx.Rngs(0))
    net.done_head.kernel[...] = jnp.zeros_like(net.done_head.kernel[...])
    net.done_head.bias[...] = jnp.full_like(net.done_head.bias[...], -20.0)
    val = splits["val"]
    outputs = nnx.jit(model.forward)(net, val)
    state = metrics.update_metrics(metrics.empty_metrics(config), outputs, val)
    figures = state.compute()
    assert figures["done_prob_max_positive"] < 1e-6
    guard = _by_name(config, splits)["done_never_predicted"]
    patience = config.guard.done_never_predicted.patience
    events = [guard.update(epoch, figures) for epoch in range(patience + 1)]
    assert events[: patience - 1] == [None] * (patience - 1)
    positives = int(val["done"].sum())
    for event in events[patience - 1 :]:
        assert event.level == "warn" and event.guard == "done_never_predicted"
        assert f"none of the {positives} done validation examples" in event.message
    # One evaluation with a confident done prediction resets the streak.
    assert guard.update(10, {**figures, "done_prob_max_positive": 0.8}) is None
    assert guard.update(11, figures) is None
    restored = guards.DoneNeverPredicted(patience)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def test_done_guard_hook_is_its_update_and_it_checks_its_metrics():
    hooked, direct = guards.DoneNeverPredicted(1), guards.DoneNeverPredicted(1)
    figures = {
        "done_prob_max_positive": 0.3,
        "done_true_rate": 0.25,
        "count": 8.0,
        "done_prob_mean": 0.2,
        "done_prob_std": 0.05,
    }
    assert hooked.on_evaluation(Evaluation(0, figures)) == direct.update(0, figures)
    assert hooked.state_dict() == direct.state_dict() == {"patience": 1, "streak": 1}
    hooked.check_metrics([*figures, "loss"])
    missing = "done_prob_max_positive, count, done_prob_mean, done_prob_std"
    with pytest.raises(ValueError, match=f"^reads metric {missing}, which the run does not"):
        hooked.check_metrics(["loss", "done_true_rate"])
    with pytest.raises(config_lib.ConfigError, match="guard.done_never_predicted.patience"):
        guards.DoneNeverPredicted(0)


def test_head_gradient_band_warns_once_per_head_and_summarises_epoch_0():
    guard = guards.HeadGradientBand(model.HEADS, (0.01, 10.0))
    inside = {f"grad_norm/{h}": 1.0 for h in model.HEADS}
    assert guard.update_step(1, 0, inside) is None
    event = guard.update_step(2, 0, {**inside, "grad_norm/y_head": 50.0})
    assert event.level == "warn" and "y_head 50" in event.message and "[0.01, 10]" in event.message
    assert guard.update_step(3, 0, {**inside, "grad_norm/y_head": 60.0}) is None  # warned already
    summary = guard.update(0, {})
    assert summary.level == "warn" and "2 of 9 outside" in summary.message
    assert "y_head median 50" in summary.message
    assert guard.update_step(40, 1, {**inside, "grad_norm/x_head": 1e-9}) is None  # epoch 1
    quiet = guards.HeadGradientBand(model.HEADS, (0.01, 10.0))
    quiet.update_step(1, 0, inside)
    assert quiet.update(0, {}).level == "info"
    with pytest.raises(config_lib.ConfigError, match="guard.head_gradient_band.band"):
        guards.HeadGradientBand(model.HEADS, (5.0, 1.0))


def test_head_gradient_band_hooks_and_state_round_trip():
    inside = {f"grad_norm/{h}": 1.0 for h in model.HEADS}
    guard = guards.HeadGradientBand(model.HEADS, (0.01, 10.0))
    event = guard.on_step(StepInfo(2, 0, {**inside, "grad_norm/done_head": 50.0}))
    assert event.guard == "head_gradient_band" and event.step == 2
    restored = guards.HeadGradientBand(model.HEADS, (0.01, 10.0))
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()
    # The restored guard does not warn again for the head it warned about.
    assert restored.on_step(StepInfo(3, 0, {**inside, "grad_norm/done_head": 60.0})) is None
    summary = restored.on_evaluation(Evaluation(0, {"loss": 1.0}))
    assert summary.guard == "head_gradient_band" and "2 of 6 outside" in summary.message
    assert restored.on_evaluation(Evaluation(1, {"loss": 1.0})) is None  # reported once


def test_make_guards_follows_the_guard_sections(small, load_small):
    config, splits = small
    made = guards.make_guards(config, splits)
    assert all(isinstance(guard, Guard) for guard in made)
    assert tuple(guard.name for guard in made) == TASK.guard_names
    assert made[0].low == 1e-5 and made[0].high == 100.0 and made[1].patience == 3
    collection = GuardCollection.from_config(config.guard, made)
    assert collection.names == (
        "nonfinite",
        *TASK.guard_names,
        "volatility",
        "overfitting",
        "early_stopping",
    )
    off = load_small(
        "guard.head_gradient_band.enabled=False",
        "guard.done_never_predicted.enabled=False",
        "guard.lenient_threshold.enabled=False",
    )
    assert guards.make_guards(off, splits) == []
    only_done = load_small(
        "guard.head_gradient_band.enabled=False", "guard.lenient_threshold.enabled=False"
    )
    assert [guard.name for guard in guards.make_guards(only_done, splits)] == [
        "done_never_predicted"
    ]


def _soft_figures(share: float, median: float = 20.0) -> dict:
    return {"soft_miss_rate": share, "pixel_error_median": median, "pixel_error_count": 100.0}


def test_lenient_threshold_warns_after_patience_evaluations_of_soft_misses():
    guard = guards.LenientThreshold(0.35, 3, (12.0, 115.0))
    guard.check_metrics(metrics.PointerMetrics.empty((64, 64)).compute())
    # The lenient variant's shape: most misses inside the 115 px zone from the start.
    events = [guard.update(epoch, _soft_figures(0.55)) for epoch in range(4)]
    assert events[:2] == [None, None]
    assert events[2].level == "warn" and events[2].epoch == 2
    assert "55%" in events[2].message and "> 12 px" in events[2].message
    assert "< 115 px" in events[2].message and "loss.threshold" in events[2].message
    assert events[3] is None  # Once per streak: the console is not flooded.
    restored = guards.LenientThreshold(0.35, 3, (12.0, 115.0))
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()  # The streak survives a resume.
    # One evaluation at or under the limit restarts the streak; NaN (no pointing step) is
    # no evidence either way; a new streak warns again.
    assert guard.update(5, _soft_figures(0.35)) is None
    assert guard.update(6, _soft_figures(float("nan"))) is None
    assert [guard.update(e, _soft_figures(0.6)) for e in (7, 8)] == [None, None]
    assert guard.update(9, _soft_figures(0.6)).epoch == 9


def test_lenient_threshold_stays_silent_on_a_healthy_sequence():
    # The healthy twin's shape: soft misses high in the first evaluations, then 10-20%.
    guard = guards.LenientThreshold(0.35, 3, (12.0, 38.0))
    shares = [0.6, 0.5, 0.3, 0.2, 0.15, 0.5, 0.12, 0.1]
    assert all(guard.update(e, _soft_figures(s)) is None for e, s in enumerate(shares))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("max_share", 1.5, "guard.lenient_threshold.max_share must be in"),
        ("max_share", 0, "guard.lenient_threshold.max_share must be in"),
        ("miss_px", -2.0, "guard.lenient_threshold.miss_px must be None"),
        ("patience", 0, "patience"),
    ],
)
def test_lenient_threshold_settings_are_checked_when_the_config_loads(
    load_small, key, value, match
):
    with pytest.raises(config_lib.ConfigError, match=match):
        load_small(f"guard.lenient_threshold.{key}={value}")
