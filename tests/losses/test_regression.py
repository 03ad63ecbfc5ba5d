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
