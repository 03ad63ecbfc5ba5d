import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxguard import losses


def _seed_hinge(distance, threshold):
    """Seed 004's version: quadratic near, `tau * d + tau**2` far (jumps at the threshold)."""
    return jnp.where(distance < threshold, distance**2, threshold * distance + threshold**2)


def _ours_on_distance(distance, threshold):
    pred = jnp.stack([distance, 0.0])[None]
    return losses.distance_hinge(pred, jnp.zeros_like(pred), threshold=threshold)[0]


def _continuity_gaps(fn, threshold, eps=1e-4):
    """Value and slope jumps of `fn(d)` across `d = threshold`, in float64-ish precision."""
    below, above = jnp.float32(threshold - eps), jnp.float32(threshold + eps)
    value_jump = float(fn(above, threshold) - fn(below, threshold))
    slope = jax.grad(lambda d: fn(d, threshold))
    slope_jump = float(slope(above) - slope(below))
    return abs(value_jump), abs(slope_jump)


@settings(max_examples=40, deadline=None)
@given(threshold=st.floats(0.02, 0.5))
def test_value_and_slope_continuous_at_threshold(threshold):
    value_jump, slope_jump = _continuity_gaps(_ours_on_distance, threshold)
    # Within eps: a smooth function moves by ~slope * 2 eps, its slope by ~2 eps * curvature.
    assert value_jump <= 2 * (2 * threshold) * 1e-4 + 1e-6
    assert slope_jump <= 4 * 1e-4 + 1e-5


@settings(max_examples=20, deadline=None)
@given(threshold=st.floats(0.02, 0.5))
def test_seed_hinge_fails_the_same_check(threshold):
    value_jump, slope_jump = _continuity_gaps(_seed_hinge, threshold)
    assert value_jump > 0.9 * threshold**2
    assert slope_jump > 0.9 * threshold


def test_equals_twice_optax_huber_of_euclidean_distance(rng):
    pred = rng.uniform(size=(50, 2)).astype(np.float32)
    target = rng.uniform(size=(50, 2)).astype(np.float32)
    distance = np.linalg.norm(pred - target, axis=-1)
    expected = 2 * optax.losses.huber_loss(distance, delta=0.1)
    np.testing.assert_allclose(
        losses.distance_hinge(pred, target, threshold=0.1), expected, rtol=1e-5, atol=1e-7
    )


def test_l1_norm_reproduces_the_seed_distance(rng):
    pred = rng.uniform(size=(20, 2)).astype(np.float32)
    target = rng.uniform(size=(20, 2)).astype(np.float32)
    d = np.abs(pred - target).sum(-1).astype(np.float64)
    expected = np.where(d <= 0.3, d**2, 0.6 * d - 0.09)
    got = losses.distance_hinge(pred, target, threshold=0.3, norm="l1")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_exact_hit_has_zero_finite_gradient():
    pred = jnp.array([[0.3, 0.6]])
    grad = jax.grad(lambda p: losses.distance_hinge(p, pred, threshold=0.1).sum())(pred)
    np.testing.assert_array_equal(grad, np.zeros((1, 2)))


def test_far_gradient_has_constant_magnitude_two_tau():
    pred = jnp.array([[0.9, 0.1], [0.5, 0.9]])
    grad = jax.grad(lambda p: losses.distance_hinge(p, jnp.zeros_like(p), threshold=0.1).sum())(
        pred
    )
    np.testing.assert_allclose(np.linalg.norm(grad, axis=-1), [0.2, 0.2], rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="`pred` must end in an axis of size 2"):
        losses.distance_hinge(jnp.zeros((3, 3)), jnp.zeros((3, 3)), threshold=0.1)
    with pytest.raises(ValueError, match="`threshold` must be finite and > 0"):
        losses.distance_hinge(jnp.zeros((3, 2)), jnp.zeros((3, 2)), threshold=0.0)
    with pytest.raises(ValueError, match="`norm` must be one of"):
        losses.distance_hinge(jnp.zeros((3, 2)), jnp.zeros((3, 2)), threshold=0.1, norm="linf")
    with pytest.raises(ValueError, match="`pred` has shape \\(3, 2\\) but `target`"):
        losses.distance_hinge(jnp.zeros((3, 2)), jnp.zeros((4, 2)), threshold=0.1)


# ----------------------------------------------------------------------------- split_distance


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_split_distance_matches_numpy(rng, norm):
    pred = rng.uniform(size=(40, 2)).astype(np.float32)
    target = rng.uniform(size=(40, 2)).astype(np.float32)
    delta = pred.astype(np.float64) - target
    d = np.abs(delta).sum(-1) if norm == "l1" else np.hypot(delta[:, 0], delta[:, 1])
    squared, distance, far = losses.split_distance("f", pred, target, 0.3, norm)
    np.testing.assert_array_equal(far, d > 0.3)
    np.testing.assert_allclose(squared, d**2, rtol=1e-5, atol=1e-7)
    # Exact where far; clamped to the threshold (L2) or exact (L1) elsewhere.
    np.testing.assert_allclose(np.asarray(distance)[far], d[far], rtol=1e-5)
    near = np.where(np.asarray(far), np.nan, 0.3 if norm == "l2" else d)
    np.testing.assert_allclose(np.asarray(distance)[~far], near[~far], rtol=1e-5)


def test_split_distance_inclusive_counts_the_threshold_as_far():
    pred = jnp.array([[0.25, 0.0], [0.0, 0.1]])
    target = jnp.zeros((2, 2))
    _, _, far = losses.split_distance("f", pred, target, 0.25, "l1")
    _, _, far_inclusive = losses.split_distance("f", pred, target, 0.25, "l1", inclusive=True)
    assert far.tolist() == [False, False] and far_inclusive.tolist() == [True, False]


def test_split_distance_jits_and_names_the_caller():
    pred = jnp.array([[0.3, 0.4]])
    jitted = jax.jit(lambda p, t: losses.split_distance("f", p, t, 0.1, "l2"))
    for got, want in zip(
        jitted(pred, jnp.zeros_like(pred)),
        losses.split_distance("f", pred, jnp.zeros_like(pred), 0.1, "l2"),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6)  # XLA may fuse the square.
    with pytest.raises(ValueError, match="my_loss: `norm` must be one of"):
        losses.split_distance("my_loss", pred, pred, 0.1, "linf")
    with pytest.raises(ValueError, match="my_loss: `pred` has shape"):
        losses.split_distance("my_loss", pred, jnp.zeros((2, 2)), 0.1, "l2")


def _hinge64(pred, target, threshold):
    """Float64 loss and gradient for `pred` of the continuous hinge, by hand."""
    delta = pred.astype(np.float64) - target.astype(np.float64)
    d = np.hypot(delta[:, 0], delta[:, 1])
    far = d > threshold
    loss = np.where(far, 2 * threshold * d - threshold**2, d**2)
    grad = np.where(far[:, None], 2 * threshold * delta / np.where(far, d, 1)[:, None], 2 * delta)
    return loss, grad


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
@pytest.mark.parametrize("threshold_scales", [False, True], ids=["tau_1", "tau_scales"])
def test_distance_hinge_matches_float64_at_extreme_scales(rng, scale, threshold_scales):
    """A hypot distance: no square of the coordinates overflows (1e30 gave inf) or underflows.

    Where float64's loss is no float32 (1e-60 and 1e60 when tau scales too) the result is 0 or
    inf, never NaN; the gradient is finite and float64's at every scale.
    """
    pred = (scale * rng.normal(size=(32, 2))).astype(np.float32)
    target = (scale * rng.normal(size=(32, 2))).astype(np.float32)
    threshold = float(np.float32(scale if threshold_scales else 1.0))
    loss, grad = jax.vmap(
        jax.value_and_grad(
            lambda p, t: losses.distance_hinge(p[None], t[None], threshold=threshold)[0]
        )
    )(pred, target)
    ref_loss, ref_grad = _hinge64(pred, target, threshold)
    tiny, huge = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    representable = (np.abs(ref_loss) >= tiny) & (np.abs(ref_loss) <= huge)
    np.testing.assert_allclose(loss[representable], ref_loss[representable], rtol=1e-5)
    assert np.all(np.asarray(loss)[ref_loss > huge] == np.inf)
    assert np.all(np.abs(np.asarray(loss)[ref_loss < tiny]) < tiny)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6 * np.max(np.abs(ref_grad)))
