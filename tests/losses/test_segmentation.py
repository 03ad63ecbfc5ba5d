"""Tests for jaxguard.losses._segmentation against float64 NumPy, scipy, scikit-learn and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from segmentation_references import signed_distance
from segmentation_references import soft_skeleton as soft_skeleton_reference
from sklearn.utils.class_weight import compute_class_weight

from jaxguard.losses._segmentation import (
    binary_class_weight_map,
    boundary_loss,
    class_weights,
    connectivity_loss,
    sigmoid_focal_loss,
    signed_distance_map,
    soft_cldice_loss,
    soft_dice_loss,
    soft_skeleton,
)

SHAPES = [(2, 8, 8), (2, 6, 6, 6)]
SHAPE_IDS = ["2d", "3d"]

_dice = jax.jit(soft_dice_loss)
_focal = jax.jit(sigmoid_focal_loss)
_class_weights = jax.jit(class_weights)
_weight_map = jax.jit(binary_class_weight_map)
_sdm = jax.jit(signed_distance_map)
_boundary = jax.jit(boundary_loss)
_skeleton = jax.jit(soft_skeleton, static_argnames="iterations")
_cldice = jax.jit(soft_cldice_loss, static_argnames="iterations")
_connectivity = jax.jit(connectivity_loss)


@jax.jit
def _boundary_from_labels(logits, labels):
    return boundary_loss(logits, signed_distance_map(labels))


# (public function, its jitted twin) for every loss taking `(logits, labels)`-like arguments.
PAIR_LOSSES = {
    "soft_dice_loss": (soft_dice_loss, _dice),
    "sigmoid_focal_loss": (sigmoid_focal_loss, _focal),
    "boundary_loss": (boundary_loss, _boundary),
    "soft_cldice_loss": (soft_cldice_loss, _cldice),
    "connectivity_loss": (connectivity_loss, _connectivity),
}
SECOND_ARG = {"boundary_loss": "signed_distance"}
# Keyword arguments used whenever a test calls the jitted twin (one compiled signature each).
PAIR_KWARGS = {
    "soft_dice_loss": {"smooth": 1.0},
    "sigmoid_focal_loss": {"alpha": 0.34, "gamma": 2.0},
}


def _sum_grad(fn):
    return jax.jit(jax.grad(lambda x, *rest: jnp.sum(fn(x, *rest))))


_GRADS = {
    "soft_dice_loss": _sum_grad(soft_dice_loss),
    "sigmoid_focal_loss": _sum_grad(lambda x, t: sigmoid_focal_loss(x, t, alpha=0.34)),
    "boundary_loss": _sum_grad(_boundary_from_labels),
    "soft_cldice_loss": _sum_grad(soft_cldice_loss),
    "connectivity_loss": _sum_grad(connectivity_loss),
}
_skeleton_grad = _sum_grad(soft_skeleton)
_sdm_grad = _sum_grad(signed_distance_map)
_weight_map_grad = jax.jit(jax.grad(lambda w, t: jnp.sum(binary_class_weight_map(t, w))))
_class_weights_grad = _sum_grad(class_weights)


def _case(shape, seed=0, foreground=0.66, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=shape)).astype(np.float32)
    labels = (rng.random(shape) < foreground).astype(np.float32)
    return logits, labels


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _sum_spatial(x):
    return x.reshape(len(x), -1).sum(axis=1)


# ---------------------------------------------------------------- float64 / scipy references


def _np_dice(logits, labels, smooth):
    p, t = _np_sigmoid(logits), np.asarray(labels, np.float64)
    return 1 - (2 * _sum_spatial(p * t) + smooth) / (_sum_spatial(p) + _sum_spatial(t) + smooth)


def _np_focal(logits, labels, alpha, gamma):
    x, t = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    log_p_t = np.where(t == 1, -np.logaddexp(0, -x), -np.logaddexp(0, x))
    loss = -((1 - np.exp(log_p_t)) ** gamma) * log_p_t
    if alpha is None:
        return loss
    return np.where(t == 1, alpha, 1 - alpha) * loss


def _np_cldice(logits, labels, iterations, smooth):
    p, t = _np_sigmoid(logits), np.asarray(labels, np.float64)
    skel_p, skel_t = soft_skeleton_reference(p, iterations), soft_skeleton_reference(t, iterations)
    tprec = (_sum_spatial(skel_p * t) + smooth) / (_sum_spatial(skel_p) + smooth)
    tsens = (_sum_spatial(skel_t * p) + smooth) / (_sum_spatial(skel_t) + smooth)
    return 1 - 2 * tprec * tsens / (tprec + tsens)


def _np_connectivity(logits, labels):
    p, t = _np_sigmoid(logits), np.asarray(labels, np.float64)
    total, edges = np.zeros(len(p)), 0
    for axis in range(1, p.ndim):
        n = p.shape[axis]
        p_i, p_j = np.take(p, range(n - 1), axis), np.take(p, range(1, n), axis)
        t_i, t_j = np.take(t, range(n - 1), axis), np.take(t, range(1, n), axis)
        target, pred = t_i * t_j, p_i * p_j
        total += _sum_spatial(-(target * np.log(pred) + (1 - target) * np.log(1 - pred)))
        edges += pred[0].size
    return total / edges


# ---------------------------------------------------------------- soft dice


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("smooth", [1.0, 1e-3])
def test_soft_dice_matches_numpy_and_optax(shape, smooth):
    logits, labels = _case(shape)
    got = _dice(logits, labels, smooth=smooth)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, _np_dice(logits, labels, smooth), rtol=1e-5)
    # optax adds its `smooth` to the half-sums: its smooth s/2 is our s.
    expected = optax.losses.binary_dice_loss(logits, labels, smooth=smooth / 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_soft_dice_rejects_nonpositive_smooth():
    logits, labels = _case(SHAPES[0])
    with pytest.raises(ValueError, match="`smooth`"):
        soft_dice_loss(logits, labels, smooth=0.0)


# ---------------------------------------------------------------- focal


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("alpha", "gamma"), [(None, 2.0), (0.34, 2.0), (0.34, 0.5), (0.8, 0.0)])
def test_sigmoid_focal_matches_numpy(shape, alpha, gamma):
    logits, labels = _case(shape)
    got = _focal(logits, labels, alpha=alpha, gamma=gamma)
    assert got.shape == shape
    np.testing.assert_allclose(got, _np_focal(logits, labels, alpha, gamma), rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_alpha_weights_foreground():
    logits, labels = _case(SHAPES[0])
    weighted = _focal(logits, labels, alpha=0.34, gamma=2.0)
    ratio = weighted / _focal(logits, labels, alpha=None, gamma=2.0)
    np.testing.assert_allclose(ratio, np.where(labels == 1, 0.34, 0.66), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"gamma": -1.0}, "gamma")],
)
def test_sigmoid_focal_rejects_bad_hyperparameters(kwargs, name):
    logits, labels = _case(SHAPES[0])
    with pytest.raises(ValueError, match=f"`{name}`"):
        sigmoid_focal_loss(logits, labels, **kwargs)


# ---------------------------------------------------------------- class weights


def test_class_weights_for_66_percent_foreground():
    np.testing.assert_allclose(class_weights(np.array([0.34, 0.66])), [1.470588, 0.757576], 1e-5)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_weights_match_sklearn_balanced(num_classes):
    y = np.random.default_rng(num_classes).integers(0, num_classes, size=500)
    expected = compute_class_weight("balanced", classes=np.arange(num_classes), y=y)
    counts = np.bincount(y, minlength=num_classes)
    np.testing.assert_allclose(class_weights(counts), expected, rtol=1e-6)
    np.testing.assert_allclose(class_weights(counts / counts.sum()), expected, rtol=1e-6)
    np.testing.assert_allclose(_class_weights(counts.astype(np.float32)), expected, rtol=1e-6)


def test_class_weights_fix_the_seed_pair():
    """Regression: the seed configured background 1.94 / foreground 0.52 for 66% foreground."""
    frequencies = np.array([0.34, 0.66])
    seed = np.array([1.94, 0.52])
    ours = np.asarray(class_weights(frequencies), np.float64)
    # Ours: frequency-weighted mean weight exactly 1 and ratio = inverse frequency ratio.
    np.testing.assert_allclose(frequencies @ ours, 1.0, rtol=1e-6)
    np.testing.assert_allclose(ours[0] / ours[1], 0.66 / 0.34, rtol=1e-6)
    # The seed pair is 1/f - 1, rounded. Its mean weight is 1.0028, not 1, but only through
    # that rounding: for two classes sum_c f_c (1/f_c - 1) = 1 exactly, so this check is weak.
    assert abs(frequencies @ seed - 1.0) > 2e-3
    np.testing.assert_allclose(seed, 1 / frequencies - 1, atol=5e-3)
    # The real defect: its ratio is the squared imbalance (3.7), not 1.94, so no normalisation
    # (a common rescaling) of the inverse frequencies can produce it.
    assert seed[0] / seed[1] == pytest.approx(3.73, abs=0.01)
    assert seed[0] / seed[1] == pytest.approx((0.66 / 0.34) ** 2, rel=0.02)
    assert not np.allclose(seed / seed.sum(), ours / ours.sum(), rtol=0.1)
    # The raw inverse frequencies 2.94 / 1.52 of the seed's comment are not normalised either.
    np.testing.assert_allclose(frequencies @ (1 / frequencies), 2.0)


def test_class_weights_zero_frequency_names_the_class():
    with pytest.raises(ValueError, match="class 1 has frequency 0"):
        class_weights(np.array([10, 0, 5]))


@pytest.mark.parametrize(
    ("frequencies", "match"),
    [
        (np.array([0.5, -0.1]), "`class_frequencies` must be finite and >= 0"),
        (np.ones((2, 2)), "`class_frequencies` must have rank 1"),
    ],
)
def test_class_weights_rejects_bad_frequencies(frequencies, match):
    with pytest.raises(ValueError, match=match):
        class_weights(frequencies)


def test_class_weights_gradient_is_finite():
    grad = _class_weights_grad(jnp.array([0.01, 0.99]))
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_binary_class_weight_map(shape):
    _, labels = _case(shape)
    weights = class_weights(np.array([0.34, 0.66]))
    got = _weight_map(labels, weights)
    assert got.shape == shape
    np.testing.assert_allclose(got, np.where(labels == 1, weights[1], weights[0]), rtol=1e-6)
    np.testing.assert_allclose(binary_class_weight_map(labels, weights), got)


@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all_background", "all_foreground"])
def test_binary_class_weight_map_gradient_is_finite(fill):
    labels = np.full((2, 8, 8), fill, np.float32)
    grad = _weight_map_grad(jnp.array([1.47, 0.76]), labels)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(), labels.size)


def test_binary_class_weight_map_rejects_bad_weights():
    with pytest.raises(ValueError, match="`weights` must end in an axis of size 2"):
        binary_class_weight_map(np.zeros((2, 8, 8)), jnp.ones(3))
    with pytest.raises(ValueError, match="`weights` must be finite and >= 0"):
        binary_class_weight_map(np.zeros((2, 8, 8)), jnp.array([1.0, -1.0]))


def test_binary_class_weight_map_takes_bool_and_soft_labels(rng):
    weights = jnp.array([0.25, 4.0])
    hard = rng.random((2, 8, 8)) < 0.3
    np.testing.assert_array_equal(
        binary_class_weight_map(hard, weights), np.where(hard, 4.0, 0.25).astype(np.float32)
    )
    soft = rng.random((2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        binary_class_weight_map(soft, weights), 4.0 * soft + 0.25 * (1 - soft), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_binary_class_weight_map_refuses_integer_labels_at_trace_time(dtype):
    """A 0/255 mask gave the background weight -254 * w0; now refused, under jit as well."""
    mask = np.zeros((2, 8, 8), dtype)
    message = (
        rf"binary_class_weight_map: `labels` must be floating \(probabilities in \[0, 1\]\) or "
        rf"bool, got {np.dtype(dtype).name if dtype is not np.int64 else 'int(32|64)'}; cast"
    )
    for fn in (binary_class_weight_map, _weight_map):
        with pytest.raises(TypeError, match=message):
            fn(mask, jnp.array([1.0, 2.0]))


def test_binary_class_weight_map_checks_concrete_label_values_only():
    labels = np.zeros((2, 8, 8), np.float32)
    labels[1, 3, 4] = 255.0
    with pytest.raises(
        ValueError,
        match=r"^binary_class_weight_map: `labels` must lie in \[0, 1\], got 255.0 at index "
        r"\(1, 3, 4\) \(shape \(2, 8, 8\)\)\.$",
    ):
        binary_class_weight_map(labels, jnp.array([1.0, 2.0]))
    # Under jit the values are traced, not checked: the documented limit (the map is affine).
    assert float(_weight_map(labels, jnp.array([1.0, 2.0]))[1, 3, 4]) == 255.0 * 2.0 - 254.0


# ---------------------------------------------------------------- signed distance / boundary


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("foreground", [0.1, 0.66, 0.95])
def test_signed_distance_map_matches_scipy(shape, foreground):
    _, labels = _case(shape, seed=1, foreground=foreground)
    np.testing.assert_allclose(_sdm(labels), signed_distance(labels), atol=1e-5)


def test_signed_distance_map_sign_convention():
    labels = np.zeros(SHAPES[0], np.float32)
    labels[:, 2:5, 2:5] = 1
    sdm = np.asarray(_sdm(labels))[0]
    assert sdm[3, 3] == -2  # centre: two steps to the background
    assert sdm[2, 3] == -1 and sdm[1, 3] == 1  # either side of the boundary
    assert sdm[0, 0] == pytest.approx(np.sqrt(8))  # diagonal to the corner voxel (2, 2)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_signed_distance_map_is_zero_without_boundary(shape):
    labels = np.zeros(shape, np.float32)
    labels[1] = 1  # example 0 all background, example 1 all foreground
    sdm = _sdm(labels)
    assert sdm.dtype == jnp.float32
    np.testing.assert_array_equal(sdm, 0)


def test_signed_distance_map_has_zero_gradient():
    # A function of the labels only: finite (zero) gradient, with and without a boundary.
    labels = np.zeros(SHAPES[0], np.float32)
    labels[1] = 1
    np.testing.assert_array_equal(_sdm_grad(labels), 0)
    np.testing.assert_array_equal(_sdm_grad(_case(SHAPES[0])[1]), 0)


def test_signed_distance_map_accepts_bool_and_int_labels():
    _, labels = _case(SHAPES[0], seed=2)
    expected = signed_distance(labels)
    for cast in (labels.astype(bool), labels.astype(np.int32)):
        got = _sdm(cast)
        assert jnp.issubdtype(got.dtype, jnp.floating)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), shape=st.sampled_from(SHAPES))
def test_signed_distance_map_property_matches_scipy(data, shape):
    mask = data.draw(hnp.arrays(np.bool_, shape))
    labels = mask.astype(np.float32)
    np.testing.assert_allclose(_sdm(labels), signed_distance(labels), atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_boundary_loss_matches_numpy(shape):
    logits, labels = _case(shape)
    sdm = signed_distance(labels)
    got = _boundary(logits, _sdm(labels))
    assert got.shape == (shape[0],)
    expected = (_np_sigmoid(logits) * sdm).reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_boundary_loss_minimum_is_minus_mean_inside_distance():
    _, labels = _case(SHAPES[1], seed=3, foreground=0.8)
    sdm = _sdm(labels)
    perfect = _boundary(30.0 * (2 * labels - 1), sdm)
    expected = np.minimum(signed_distance(labels), 0).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(perfect, expected, rtol=1e-5)
    assert (perfect < 0).all()
    logits, _ = _case(SHAPES[1], seed=4)
    assert (_boundary(logits, sdm) > perfect).all()


# ---------------------------------------------------------------- soft skeleton / clDice


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_soft_skeleton_matches_scipy_grey_morphology(shape):
    _, labels = _case(shape, seed=5)
    np.testing.assert_allclose(_skeleton(labels), soft_skeleton_reference(labels, 10), atol=1e-6)
    probs = _np_sigmoid(_case(shape, seed=6)[0]).astype(np.float32)  # soft inputs as well
    np.testing.assert_allclose(_skeleton(probs), soft_skeleton_reference(probs, 10), atol=1e-5)


def test_soft_skeleton_of_bars_is_their_centre_line():
    bars = np.zeros(SHAPES[0], np.float32)
    bars[0, 1:6, :] = 1  # 5 voxels thick, spanning the width
    bars[1, 1:6, 1:7] = 1  # 5 x 6 bar away from the edges
    skeleton = np.asarray(_skeleton(bars))
    assert (skeleton * (1 - bars) == 0).all()  # inside the shapes
    expected = np.zeros_like(bars)
    expected[0, 3, :] = 1  # the centre line
    expected[1, 3, 3:5] = 1  # the centre line, less the bar's ends
    np.testing.assert_allclose(skeleton, expected)


def test_soft_skeleton_of_slab_is_its_centre_plane():
    slab = np.zeros(SHAPES[1], np.float32)
    slab[:, 1:4] = 1  # 3 voxels thick, spanning the other two axes
    skeleton = np.asarray(_skeleton(slab))
    expected = np.zeros_like(slab)
    expected[:, 2] = 1
    np.testing.assert_allclose(skeleton, expected)


@pytest.mark.parametrize("name", ["soft_skeleton", "soft_cldice_loss"])
def test_skeleton_iterations_are_checked(name):
    probs = np.zeros((1, 4, 4), np.float32)
    call = (
        soft_skeleton if name == "soft_skeleton" else lambda x, **kw: soft_cldice_loss(x, x, **kw)
    )
    with pytest.raises(TypeError, match=f"{name}: `iterations` must be a Python int"):
        call(probs, iterations=2.5)
    with pytest.raises(ValueError, match=f"{name}: `iterations` must be finite and >= 0"):
        call(probs, iterations=-1)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_soft_cldice_matches_numpy(shape):
    logits, labels = _case(shape, seed=7)
    got = _cldice(logits, labels)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, _np_cldice(logits, labels, 10, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_soft_cldice_perfect_prediction_is_zero(shape):
    _, labels = _case(shape, seed=8, foreground=0.5)
    np.testing.assert_allclose(_cldice(30.0 * (2 * labels - 1), labels), 0, atol=1e-6)


# ---------------------------------------------------------------- connectivity


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_connectivity_matches_numpy(shape):
    logits, labels = _case(shape, seed=9)
    got = _connectivity(logits, labels)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, _np_connectivity(logits, labels), rtol=1e-5)


def _hard_logits(mask):
    return (6.0 * (2 * mask - 1)).astype(np.float32)


def _compare_two_predictions(truth, pred_worse, pred_better):
    """Connectivity losses of two predictions of `truth` with equal voxel errors and dice."""
    labels = np.stack([truth, truth])
    preds = np.stack([pred_worse, pred_better])
    assert np.sum(pred_worse != truth) == np.sum(pred_better != truth)
    dice = _dice(_hard_logits(preds), labels, smooth=1.0)
    np.testing.assert_allclose(dice[0], dice[1], rtol=1e-5)
    return _connectivity(_hard_logits(preds), labels)


def test_connectivity_penalises_breaking_a_line_more_than_trimming_it():
    truth = np.zeros(SHAPES[0][1:], np.float32)
    truth[3] = 1  # one-voxel-thin line across the patch
    broken, trimmed = truth.copy(), truth.copy()
    broken[3, 4] = 0  # gap in the middle: two pieces
    trimmed[3, 7] = 0  # shortened at the edge: still one piece
    assert ndimage.label(broken)[1] == 2 and ndimage.label(trimmed)[1] == 1
    loss_broken, loss_trimmed = _compare_two_predictions(truth, broken, trimmed)
    assert loss_broken > loss_trimmed


def test_connectivity_penalises_cutting_a_sheet_more_than_trimming_it():
    truth = np.zeros(SHAPES[1][1:], np.float32)
    truth[2] = 1  # one-voxel-thin sheet
    cut, trimmed = truth.copy(), truth.copy()
    cut[2, 3, :] = 0  # a row through the middle of the sheet: two pieces
    trimmed[2, 0, :] = 0  # the sheet's rim row: still one piece
    assert ndimage.label(cut)[1] == 2 and ndimage.label(trimmed)[1] == 1
    loss_cut, loss_trimmed = _compare_two_predictions(truth, cut, trimmed)
    assert loss_cut > loss_trimmed


def test_connectivity_penalises_bridges_more_than_isolated_false_positives():
    truth = np.zeros(SHAPES[0][1:], np.float32)
    truth[2] = truth[4] = 1  # two sheets one voxel apart
    bridged, speckled = truth.copy(), truth.copy()
    bridged[3, 4] = 1  # merges the sheets
    speckled[7, 4] = 1  # same-size error, touching nothing
    assert ndimage.label(bridged)[1] == 1 and ndimage.label(speckled)[1] == 3
    loss_bridged, loss_speckled = _compare_two_predictions(truth, bridged, speckled)
    assert loss_bridged > loss_speckled


def test_connectivity_is_finite_for_saturated_logits():
    logits, labels = _case(SHAPES[0], seed=10, scale=500.0)
    loss = _connectivity(logits, labels)
    assert np.isfinite(loss).all()
    assert np.isfinite(_GRADS["connectivity_loss"](logits, labels)).all()


def test_connectivity_needs_an_edge():
    with pytest.raises(ValueError, match="no adjacent voxel pairs"):
        connectivity_loss(np.zeros((2, 1, 1), np.float32), np.zeros((2, 1, 1), np.float32))


# ---------------------------------------------------------------- common contract


def _second_argument(name, labels):
    return signed_distance(labels).astype(np.float32) if name == "boundary_loss" else labels


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_shape_mismatch_names_the_argument(name):
    fn, _ = PAIR_LOSSES[name]
    logits, labels = _case(SHAPES[0])
    second = SECOND_ARG.get(name, "labels")
    with pytest.raises(ValueError, match=f"{name}: `logits` has shape .* but `{second}`"):
        fn(logits, _second_argument(name, labels)[:, :, :-1])


RANK_CASES = [
    ("soft_dice_loss", lambda a: soft_dice_loss(a, a), "logits"),
    ("sigmoid_focal_loss", lambda a: sigmoid_focal_loss(a, a), "logits"),
    ("boundary_loss", lambda a: boundary_loss(a, a), "logits"),
    ("soft_cldice_loss", lambda a: soft_cldice_loss(a, a), "logits"),
    ("connectivity_loss", lambda a: connectivity_loss(a, a), "logits"),
    ("signed_distance_map", signed_distance_map, "labels"),
    ("soft_skeleton", soft_skeleton, "probs"),
    ("binary_class_weight_map", lambda a: binary_class_weight_map(a, jnp.ones(2)), "labels"),
]


@pytest.mark.parametrize(("name", "call", "argument"), RANK_CASES, ids=[c[0] for c in RANK_CASES])
@pytest.mark.parametrize("shape", [(2, 8), (2, 4, 4, 4, 4)], ids=["rank2", "rank5"])
def test_rank_is_checked(name, call, argument, shape):
    with pytest.raises(ValueError, match=f"{name}: `{argument}` must have rank 3 or 4"):
        call(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_jit_matches_eager(name):
    fn, jitted = PAIR_LOSSES[name]
    logits, labels = _case(SHAPES[0], seed=11)
    second = _second_argument(name, labels)
    kwargs = PAIR_KWARGS.get(name, {})
    np.testing.assert_allclose(
        jitted(logits, second, **kwargs), fn(logits, second, **kwargs), rtol=1e-6, atol=1e-7
    )


def test_jit_matches_eager_for_maps_and_weights():
    logits, labels = _case(SHAPES[0], seed=12)
    probs = np.asarray(jax.nn.sigmoid(logits))
    np.testing.assert_allclose(_sdm(labels), signed_distance_map(labels))
    np.testing.assert_allclose(_skeleton(probs), soft_skeleton(probs), rtol=1e-6)
    weights = jnp.array([1.47, 0.76])
    weight_map = binary_class_weight_map(labels, weights)
    np.testing.assert_allclose(_weight_map(labels, weights), weight_map)
    counts = np.array([3.0, 7.0], np.float32)
    np.testing.assert_allclose(_class_weights(counts), class_weights(counts), rtol=1e-6)


# soft_cldice_loss only in 3D: its backward pass is the slowest to compile, and the 2D soft
# skeleton backward is covered by the soft_skeleton gradient test below.
GRADIENT_CASES = [
    (name, shape)
    for name in PAIR_LOSSES
    for shape in SHAPES
    if not (name == "soft_cldice_loss" and len(shape) == 3)
]


@pytest.mark.parametrize(
    ("name", "shape"), GRADIENT_CASES, ids=[f"{n}-{len(s) - 1}d" for n, s in GRADIENT_CASES]
)
@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all_background", "all_foreground"])
@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["moderate", "saturated"])
def test_gradients_are_finite_for_degenerate_labels(name, shape, fill, scale):
    logits, _ = _case(shape, seed=13, scale=scale)
    labels = np.full(shape, fill, np.float32)
    grad = _GRADS[name](logits, labels)
    assert grad.shape == shape
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all_background", "all_foreground"])
def test_soft_skeleton_gradient_is_finite_for_degenerate_masks(fill):
    # 2D only: the 3D skeleton gradient is exercised through soft_cldice_loss above.
    assert np.isfinite(_skeleton_grad(np.full(SHAPES[0], fill, np.float32))).all()
