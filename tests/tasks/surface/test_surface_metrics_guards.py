"""clDice metric, connected components and the surface task's guards."""

import json
import os

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxguard import config as config_lib
from jaxguard.tasks.surface import task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_cldice = jax.jit(task.binary_cldice, static_argnames="iterations")
_update = jax.jit(task.SurfaceMetrics.update)


def _slab(shape=(8, 8, 8)):
    slab = np.zeros(shape, np.float32)
    slab[2:5] = 1  # 3 voxels thick along axis 0, spanning axes 1 and 2
    return slab


def test_cldice_of_a_cut_slab_is_hand_computed():
    truth = _slab()
    cut = truth.copy()
    cut[:, :, 3:5] = 0  # a 2-voxel cut through the whole sheet
    # The true skeleton is the centre plane (64 voxels); the cut prediction covers 48 of
    # them (Tsens = 0.75), and the cut pieces' skeletons lie inside the truth (Tprec = 1).
    expected = 2 * 1.0 * 0.75 / (1.0 + 0.75)
    scores = _cldice(np.stack([truth, cut]), np.stack([truth, truth]), iterations=3)
    np.testing.assert_allclose(scores, [1.0, expected], rtol=1e-6)


def test_cldice_of_empty_masks():
    empty, slab = np.zeros((8, 8, 8), np.float32), _slab()
    scores = _cldice(np.stack([empty, empty, slab]), np.stack([empty, slab, empty]), iterations=3)
    # Both empty: perfect. Missing the sheet, or predicting one that is not there: 0.
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0])


def _batches(seed=0, count=3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, 2, 8, 8, 8)) < 0.6).astype(np.float32)
    probs = np.clip(0.6 * labels + 0.5 * rng.random(labels.shape), 0, 1).astype(np.float32)
    return probs, labels


def test_surface_metrics_stream_and_merge_exactly():
    probs, labels = _batches()
    single = task.SurfaceMetrics.empty(iterations=3)
    for p, t in zip(probs, labels, strict=True):
        single = _update(single, p, t)
    first = _update(task.SurfaceMetrics.empty(iterations=3), probs[0], labels[0])
    rest = task.SurfaceMetrics.empty(iterations=3)
    for p, t in zip(probs[1:], labels[1:], strict=True):
        rest = _update(rest, p, t)
    merged = first.merge(rest).compute()
    result = single.compute()
    assert merged == result
    # clDice: the mean over all examples of the per-example values.
    flat_probs = probs.reshape(-1, 8, 8, 8)
    flat_labels = labels.reshape(-1, 8, 8, 8)
    per_example = _cldice((flat_probs > 0.5).astype(np.float32), flat_labels, iterations=3)
    assert result["cldice"] == pytest.approx(float(np.mean(per_example)), rel=1e-6)
    # The confusion-count part is SegmentationMetrics: dice is the voxel F1.
    truth, predicted = flat_labels.ravel() >= 0.5, flat_probs.ravel() > 0.5
    assert result["dice"] == pytest.approx(skm.f1_score(truth, predicted), rel=1e-12)
    assert result["fg_fraction_true"] == pytest.approx(truth.mean(), rel=1e-12)


def test_merge_refuses_other_skeleton_depths():
    with pytest.raises(ValueError, match="iterations differ"):
        task.SurfaceMetrics.empty(iterations=3).merge(task.SurfaceMetrics.empty(iterations=5))


def test_empty_metrics_give_nan_cldice():
    assert np.isnan(task.SurfaceMetrics.empty(iterations=2).compute()["cldice"])


def test_all_foreground_dice_is_two_f_over_one_plus_f():
    labels = np.zeros(100)
    labels[:66] = 1
    assert task.all_foreground_dice(labels) == pytest.approx(2 * 0.66 / 1.66)


def test_volume_figures_count_six_connected_components():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:3] = 1
    truth[5:7] = 1  # two sheets
    predicted = truth.copy()
    predicted[5:7, :, 4] = 0  # the second sheet cut in two
    predicted[4, 0, 0] = 1  # a speck touching the second sheet's first half: joins it
    predicted[3, 4, 4] = 1  # a speck touching the first sheet: joins it
    figures = task.volume_figures(predicted, truth, iterations=2)
    assert figures["components_true"] == 2
    assert figures["components_pred"] == 3
    expected_dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum())
    assert figures["dice"] == pytest.approx(expected_dice)
    assert figures["all_foreground_dice"] == pytest.approx(2 * 0.5 / 1.5)


# ----------------------------------------------------------------------------- plateau guard


def _plateau(**overrides):
    settings = dict(patience=5, tolerance=0.1, start_within=10)
    return task.PlateauGuard(**{**settings, **overrides})


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
    return task.MajorityClassGuard(**{**settings, **overrides})


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
    guards = task.make_guards(config_lib.load_config(small), splits)
    assert set(guards) == {"plateau", "majority_class"}
    assert guards["majority_class"].prior == pytest.approx(0.7)
    off = config_lib.load_config(
        small, ["loss.plateau_guard.enabled=False", "loss.majority_guard.enabled=False"]
    )
    assert task.make_guards(off, splits) == {}
