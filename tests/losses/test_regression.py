import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxguard import losses


def _var64(x):
    x = np.asarray(x, np.float64)
    return np.mean((x - x.mean()) ** 2)


@pytest.fixture
def batch(rng):
    target = rng.gamma(2.0, 0.45, size=(32,)).astype(np.float32) + 0.15
    pred = (0.6 * target + rng.normal(0, 0.1, size=32)).astype(np.float32)
    return pred, target


def test_absolute_error_matches_numpy_and_sklearn(batch):
    from sklearn.metrics import mean_absolute_error

    pred, target = batch
    got = losses.absolute_error(jnp.asarray(pred), jnp.asarray(target))
    assert got.shape == pred.shape
    np.testing.assert_allclose(got, np.abs(pred.astype(np.float64) - target), rtol=1e-6)
    assert float(jnp.mean(got)) == pytest.approx(mean_absolute_error(target, pred), rel=1e-6)


def test_variance_penalty_matches_float64(batch):
    pred, target = batch
    expected = (1 - _var64(pred) / _var64(target)) ** 2
    assert float(losses.variance_penalty(pred, target)) == pytest.approx(expected, rel=1e-5)


def test_variance_penalty_uses_variances_not_stds():
    # std ratio 0.5 -> variance ratio 0.25 -> penalty 0.5625 (a std ratio would give 0.25).
    target = jnp.array([-2.0, 2.0, -2.0, 2.0])
    pred = 0.5 * target
    assert float(losses.variance_penalty(pred, target)) == pytest.approx(0.5625)


def test_variance_penalty_is_zero_for_matched_spread_and_one_for_constant(batch):
    _, target = batch
    assert float(losses.variance_penalty(target + 3.0, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.variance_penalty(jnp.full_like(target, 0.72), target)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fn", [losses.variance_penalty, losses.r2_penalty, losses.std_gap], ids=lambda f: f.__name__
)
def test_batch_terms_zero_variance_target_is_finite(fn):
    target = jnp.full((8,), 0.94)
    pred = jnp.linspace(0.0, 1.0, 8)
    value, grad = jax.value_and_grad(lambda p: fn(p, target))(pred)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "fn",
    [losses.variance_penalty, losses.std_gap, losses.negative_variance],
    ids=lambda f: f.__name__,
)
def test_batch_terms_constant_prediction_has_finite_gradient(fn, batch):
    _, target = batch
    pred = jnp.full_like(target, 0.72)
    args = (pred,) if fn is losses.negative_variance else (pred, target)
    grad = jax.grad(lambda p: fn(p, *args[1:]))(pred)
    assert np.all(np.isfinite(grad))


def test_variance_penalty_gradient_pushes_spread_up(batch):
    pred, target = batch
    grad = jax.grad(losses.variance_penalty)(jnp.asarray(pred), jnp.asarray(target))
    # Gradient descent moves predictions away from their mean when var(pred) < var(target).
    centered = pred - pred.mean()
    assert float(jnp.sum(-grad * centered)) > 0


def test_r2_penalty_is_one_minus_sklearn_r2(batch):
    from sklearn.metrics import r2_score

    pred, target = batch
    expected = 1 - r2_score(target.astype(np.float64), pred.astype(np.float64))
    assert float(losses.r2_penalty(pred, target)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.r2_penalty(jnp.full_like(target, target.mean()), target)) == pytest.approx(
        1.0, rel=1e-5
    )


def test_std_gap_and_negative_variance_match_float64(batch):
    pred, target = batch
    expected = abs(np.sqrt(_var64(pred)) - np.sqrt(_var64(target)))
    assert float(losses.std_gap(pred, target)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.negative_variance(pred)) == pytest.approx(-_var64(pred), rel=1e-5)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_pinball_loss_matches_sklearn(batch, q):
    from sklearn.metrics import mean_pinball_loss

    pred, target = batch
    got = float(jnp.mean(losses.pinball_loss(pred, target, quantile=q)))
    assert got == pytest.approx(mean_pinball_loss(target, pred, alpha=q), rel=1e-5)


def test_pinball_rejects_quantile_outside_unit_interval(batch):
    pred, target = batch
    with pytest.raises(ValueError, match="pinball_loss: `quantile`"):
        losses.pinball_loss(pred, target, quantile=1.5)


def test_overweight_high_targets():
    target = jnp.array([0.2, 1.3, 0.9, 1.9])
    np.testing.assert_array_equal(
        losses.overweight_high_targets(target, threshold=1.2, overweight_factor=1.5),
        [1.0, 1.5, 1.0, 1.5],
    )
    np.testing.assert_array_equal(
        losses.overweight_high_targets(target, threshold=1.2, overweight_factor=1.0), np.ones(4)
    )
    with pytest.raises(ValueError, match="`overweight_factor`"):
        losses.overweight_high_targets(target, threshold=1.2, overweight_factor=-1.0)


@pytest.mark.parametrize(
    "fn",
    [losses.absolute_error, losses.variance_penalty, losses.r2_penalty, losses.std_gap],
    ids=lambda f: f.__name__,
)
def test_shape_mismatch_names_arguments(fn):
    with pytest.raises(ValueError, match=r"`pred` has shape \(3,\) but `target` has shape \(4,\)"):
        fn(jnp.zeros(3), jnp.zeros(4))


def test_integer_inputs_rejected():
    with pytest.raises(TypeError, match="variance_penalty: `pred` must have a floating dtype"):
        losses.variance_penalty(jnp.arange(4), jnp.ones(4))


def test_scalar_rejected_for_batch_terms():
    with pytest.raises(ValueError, match="`pred` must have at least 1 axes"):
        losses.variance_penalty(jnp.float32(1.0), jnp.float32(1.0))


@pytest.mark.parametrize(
    "fn", [losses.variance_penalty, losses.r2_penalty, losses.std_gap], ids=lambda f: f.__name__
)
def test_jit_matches_eager_on_batched_fields(fn, rng):
    pred = rng.normal(size=(4, 5, 3)).astype(np.float32)
    target = rng.normal(size=(4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(fn)(pred, target), fn(pred, target), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.0, 3.0), offset=st.floats(-5.0, 5.0))
def test_variance_penalty_property_scale(scale, offset):
    target = jnp.array([0.15, 0.5, 0.9, 1.2, 1.95])
    pred = scale * target + offset
    assert float(losses.variance_penalty(pred, target)) == pytest.approx(
        (1 - scale**2) ** 2, rel=1e-4, abs=1e-5
    )


# ----------------------------------------------------------------------------- the fast kernel
# variance_penalty is a one-pass blocked reduction with an analytic custom_vjp; these
# tests hold it to float64 NumPy and to plain-jnp autodiff on random (non-zero) inputs.

# 2**20 + 37 elements: 1024 full blocks of the one-pass sum plus a ragged tail.
_LARGE = 2**20 + 37
_penalty_and_grads = jax.jit(jax.value_and_grad(losses.variance_penalty, argnums=(0, 1)))


def _penalty64(pred, target):
    """Float64 value and gradients of `(1 - var(p) / var(t))**2`, derived by hand."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    ratio = p.var() / t.var()
    grad_pred = -4 * (1 - ratio) / (t.var() * p.size) * (p - p.mean())
    grad_target = 4 * (1 - ratio) * ratio / (t.var() * t.size) * (t - t.mean())
    return (1 - ratio) ** 2, grad_pred, grad_target


def _assert_close_to_float64(got, expected, rtol):
    value, (grad_pred, grad_target) = got
    ref_value, ref_pred, ref_target = expected
    assert float(value) == pytest.approx(ref_value, rel=rtol)
    for grad, ref in ((grad_pred, ref_pred), (grad_target, ref_target)):
        error = np.max(np.abs(np.asarray(grad, np.float64) - ref)) / np.max(np.abs(ref))
        assert error < rtol


def _gamma_data(rng):
    """Optical-depth-like: gamma targets, under-spread predictions."""
    target = rng.gamma(2.0, 0.45, _LARGE) + 0.15
    return 0.6 * target + rng.normal(0, 0.1, _LARGE), target


def _offset_data(rng):
    """A mean 1e5 times the spread: E[x^2] - E[x]^2 loses every digit here in float32."""
    return rng.normal(1e4, 0.08, _LARGE), rng.normal(1e4, 0.1, _LARGE)


def _near_perfect_offset_data(rng):
    """Near-perfect predictions on a large mean: the MSE is 1e-10 of mean**2."""
    target = rng.normal(1e4, 0.1, _LARGE)
    return target + rng.normal(0, 0.01, _LARGE), target


def _heavy_tailed_data(rng):
    """Heavy tails with outliers at 1e3 standard deviations."""
    return rng.standard_t(2, _LARGE), 1e3 * rng.standard_cauchy(_LARGE) % 1e4


@pytest.mark.parametrize(
    "make_data",
    [_gamma_data, _offset_data, _heavy_tailed_data],
    ids=["gamma", "offset", "heavy_tails"],
)
def test_variance_penalty_matches_float64_at_a_million_elements(rng, make_data):
    pred, target = (x.astype(np.float32) for x in make_data(rng))
    got = _penalty_and_grads(pred, target)
    _assert_close_to_float64(got, _penalty64(pred, target), rtol=1e-5)


@pytest.mark.parametrize("shape", [(3,), (31, 33), (2, 1500)])
def test_variance_penalty_gradients_match_plain_jnp_autodiff(rng, shape):
    """Through the composed seed loss: tiny, one-loop and blocked-with-tail sizes."""
    pred = rng.normal(0.3, 0.7, size=shape).astype(np.float32)
    target = rng.gamma(2.0, 0.45, size=shape).astype(np.float32)

    def naive_penalty(p, t):
        var = lambda x: jnp.mean((x - jnp.mean(x)) ** 2)
        return jnp.where(
            var(t) > 1e-12, (1 - var(p) / jnp.where(var(t) > 1e-12, var(t), 1)) ** 2, 0
        )

    def seed_loss(penalty):
        return lambda p, t: jnp.mean((p - t) ** 2) + 0.5 * penalty(p, t)

    got = jax.jit(jax.grad(seed_loss(losses.variance_penalty), argnums=(0, 1)))(pred, target)
    expected = jax.jit(jax.grad(seed_loss(naive_penalty), argnums=(0, 1)))(pred, target)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6 * np.max(np.abs(e)))


def test_variance_penalty_gradient_matches_finite_differences(rng):
    pred = rng.normal(0.0, 0.5, size=(6,)).astype(np.float64)
    target = rng.normal(0.0, 1.0, size=(6,)).astype(np.float64)
    value = lambda p: _penalty64(p, target)[0]
    step = 1e-6
    numeric = [
        (value(pred + step * np.eye(6)[i]) - value(pred - step * np.eye(6)[i])) / (2 * step)
        for i in range(6)
    ]
    grad = jax.grad(losses.variance_penalty)(pred.astype(np.float32), target.astype(np.float32))
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


def test_variance_penalty_large_degenerate_batches(rng):
    """Zero-variance target: 0 with zero gradients; constant prediction: 1, finite gradients."""
    pred = rng.normal(size=_LARGE).astype(np.float32)
    constant = np.full(_LARGE, 0.94, np.float32)
    value, grads = _penalty_and_grads(pred, constant)
    assert float(value) == 0.0
    assert all(not np.any(np.asarray(g)) for g in grads)
    value, grads = _penalty_and_grads(constant, pred)
    assert float(value) == pytest.approx(1.0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert not np.any(np.asarray(grads[0]))  # a constant has no deviation to push


def test_variance_penalty_keeps_low_precision_dtypes(rng):
    pred = jnp.asarray(rng.normal(size=(64,)), jnp.bfloat16)
    target = jnp.asarray(rng.normal(size=(64,)), jnp.bfloat16)
    value, (grad_pred, grad_target) = jax.value_and_grad(losses.variance_penalty, argnums=(0, 1))(
        pred, target
    )
    assert value.dtype == grad_pred.dtype == grad_target.dtype == jnp.bfloat16
    expected = (1 - _var64(pred.astype(np.float32)) / _var64(target.astype(np.float32))) ** 2
    assert float(value) == pytest.approx(expected, rel=1e-2)


def test_variance_penalty_writes_no_full_size_temporary():
    """Forward and gradient read the inputs without materialising anything of their size."""
    pred = jnp.zeros(_LARGE)
    compiled = jax.jit(jax.value_and_grad(losses.variance_penalty)).lower(pred, pred).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < pred.nbytes // 4


# variance_preserving_mse shares variance_penalty's pass and adds the MSE to it.
_preserving_and_grads = jax.jit(
    jax.value_and_grad(
        lambda p, t: losses.variance_preserving_mse(p, t, variance_weight=0.5), argnums=(0, 1)
    )
)


def _preserving64(pred, target, weight=0.5):
    """Float64 value and gradients of `mean((p - t)**2) + weight * penalty`, by hand."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    penalty, penalty_pred, penalty_target = _penalty64(p, t)
    mse_grad = 2 * (p - t) / p.size
    return (
        np.mean((p - t) ** 2) + weight * penalty,
        mse_grad + weight * penalty_pred,
        -mse_grad + weight * penalty_target,
    )


@pytest.mark.parametrize(
    "make_data",
    [_gamma_data, _near_perfect_offset_data, _heavy_tailed_data],
    ids=["gamma", "offset", "heavy_tails"],
)
def test_variance_preserving_mse_matches_float64_at_a_million_elements(rng, make_data):
    pred, target = (x.astype(np.float32) for x in make_data(rng))
    got = _preserving_and_grads(pred, target)
    # On the offset data r = var(pred) / var(target) is 1.0097: `1 - r` cancels, so one
    # float32 rounding of a variance (6e-8, as float64 measures it) moves the gradient by
    # 1e-5 relative. The variances themselves are held to 1e-7 below.
    _assert_close_to_float64(got, _preserving64(pred, target), rtol=2e-5)


@pytest.mark.parametrize("shape", [(3,), (31, 33), (2, 1500)])
@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_variance_preserving_mse_equals_mse_plus_weighted_penalty(rng, shape, weight):
    pred = rng.normal(0.3, 0.7, size=shape).astype(np.float32)
    target = rng.gamma(2.0, 0.45, size=shape).astype(np.float32)

    def composed(p, t):
        return jnp.mean((p - t) ** 2) + weight * losses.variance_penalty(p, t)

    fused = lambda p, t: losses.variance_preserving_mse(p, t, variance_weight=weight)
    got = jax.value_and_grad(fused, argnums=(0, 1))(pred, target)
    expected = jax.value_and_grad(composed, argnums=(0, 1))(pred, target)
    assert float(got[0]) == pytest.approx(float(expected[0]), rel=1e-5)
    for g, e in zip(got[1], expected[1], strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6 * np.max(np.abs(e)))


def test_variance_preserving_mse_rejects_a_negative_weight(batch):
    with pytest.raises(ValueError, match="variance_preserving_mse: `variance_weight` must be"):
        losses.variance_preserving_mse(*batch, variance_weight=-0.5)


def test_variance_preserving_mse_writes_no_full_size_temporary():
    pred = jnp.zeros(_LARGE)
    compiled = jax.jit(jax.grad(losses.variance_preserving_mse)).lower(pred, pred).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < pred.nbytes // 4


# ----------------------------------------------------------------------------- extreme scales
# The batch terms square values: in float32 a square overflows beyond 1.8e19 and underflows
# below 1.1e-19. Each term computes in units of its inputs' scale, so it matches a float64
# re-derivation wherever float64's value is a float32 (and is 0 below, +-inf above).
SCALES = [1e-30, 1.0, 1e30]
_TINY, _HUGE = np.finfo(np.float32).tiny, np.finfo(np.float32).max


def _assert_float32_of(got, expected, rtol=1e-5):
    """`got` is float64's `expected` as float32 holds it: close, 0 below its range, inf above."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    above, below = np.abs(expected) > _HUGE, np.abs(expected) < _TINY
    np.testing.assert_array_equal(got[above], np.sign(expected[above]) * np.inf)
    assert np.all(np.abs(got[below]) < _TINY), got[below]
    inside = ~above & ~below
    np.testing.assert_allclose(got[inside], expected[inside], rtol=rtol)


def _assert_gradient_of(got, expected, rtol=1e-5):
    """Finite, and within `rtol` of float64's largest entry (the `_assert_close_to_float64` way)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - expected)) <= rtol * np.max(np.abs(expected))


def _scaled_batch(rng, scale):
    """Float32 inputs at `scale`, and the same values in float64 for the references."""
    target = (scale * rng.gamma(2.0, 0.45, 64)).astype(np.float32)
    pred = (0.6 * target + scale * rng.normal(0, 0.1, 64)).astype(np.float32)
    return pred, target, pred.astype(np.float64), target.astype(np.float64)


def _r2_64(p, t):
    """Value and gradients of `sum((p - t)**2) / sum((t - mean t)**2)`, by hand."""
    residual, spread = np.sum((p - t) ** 2), np.sum((t - t.mean()) ** 2)
    grad_pred = 2 * (p - t) / spread
    # d/dt: -2 (p - t) / spread - residual / spread**2 * 2 (t - mean t).
    grad_target = -grad_pred - 2 * residual * (t - t.mean()) / spread**2
    return residual / spread, grad_pred, grad_target


def _std_gap64(p, t):
    """Value and gradients of `|std(p) - std(t)|`, by hand."""
    sign = np.sign(p.std() - t.std())
    grad_pred = sign * (p - p.mean()) / (p.size * p.std())
    grad_target = -sign * (t - t.mean()) / (t.size * t.std())
    return abs(p.std() - t.std()), grad_pred, grad_target


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    ("fn", "reference"),
    [
        (losses.variance_penalty, _penalty64),
        (losses.r2_penalty, _r2_64),
        (losses.std_gap, _std_gap64),
    ],
    ids=["variance_penalty", "r2_penalty", "std_gap"],
)
def test_batch_terms_match_float64_at_extreme_scales(rng, fn, reference, scale):
    pred, target, p64, t64 = _scaled_batch(rng, scale)
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(pred, target)
    ref_value, *ref_grads = reference(p64, t64)
    _assert_float32_of(value, ref_value)
    for grad, ref in zip(grads, ref_grads, strict=True):
        _assert_gradient_of(grad, ref)


@pytest.mark.parametrize("size", [4096, _LARGE], ids=["small", "large"])
@pytest.mark.parametrize("scale", SCALES)
def test_variance_penalty_at_extreme_scales_sparse_and_outlying(rng, scale, size):
    """Nine sampled elements that say nothing of the scale: the largest deviation sets it.

    Below 2**16 elements that is always so; from there the sampled scale fails (nine zeros,
    or an outlier whose square overflows in its units) and the second pass is taken.
    """
    sparse = np.zeros(size, np.float32)
    sparse[rng.choice(size, 40, replace=False)] = scale * rng.gamma(2.0, 1.0, 40)
    outlying = (scale * 1e-25 * rng.normal(size=size)).astype(np.float32)
    outlying[7] = scale
    for target in (sparse, outlying):
        pred = (0.5 * target).astype(np.float32)
        got = _penalty_and_grads(pred, target)
        _assert_close_to_float64(got, _penalty64(pred, target), rtol=1e-5)


@pytest.mark.parametrize("scale", SCALES)
def test_variance_preserving_mse_at_extreme_scales(rng, scale):
    """The penalty is exact at every scale; the MSE is float64's where float32 holds it."""
    pred, target, p64, t64 = _scaled_batch(rng, scale)
    value, grads = _preserving_and_grads(pred, target)
    penalty, *_ = _penalty64(p64, t64)
    _assert_float32_of(value, np.mean((p64 - t64) ** 2) + 0.5 * penalty)
    for grad, ref in zip(grads, _preserving64(p64, t64)[1:], strict=True):
        _assert_gradient_of(grad, ref)


@pytest.mark.parametrize("scale", [1e-18, 1.0, 1e18])
def test_negative_variance_where_float32_holds_the_variance(rng, scale):
    """A std of 1e18 over 4096 elements: the sum of squares (4e39) would overflow unscaled."""
    pred = (scale * rng.normal(size=4096)).astype(np.float32)
    value, grad = jax.value_and_grad(losses.negative_variance)(pred)
    p64 = pred.astype(np.float64)
    _assert_float32_of(value, -p64.var())
    _assert_gradient_of(grad, -2 * (p64 - p64.mean()) / p64.size)
