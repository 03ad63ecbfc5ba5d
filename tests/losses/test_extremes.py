import jax
import numpy as np
import pytest

from jaxguard import losses

THRESHOLD = 10.0


def _extreme_mae_numpy(pred, target, threshold):
    """Float64 re-derivation: mean over samples with extremes of their mean extreme error."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    per_sample = []
    for p, t in zip(pred, target, strict=True):
        extreme = t > threshold
        if extreme.any():
            per_sample.append(np.abs(p - t)[extreme].mean())
    return float(np.mean(per_sample)) if per_sample else 0.0


def _seed_ratio_scaled(pred, target, threshold, lambda_base, lambda_ext):
    """The seed-002 bug: the extreme term multiplied by the fraction of samples holding extremes."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    has_extreme = (target > threshold).reshape(len(target), -1).any(axis=1)
    ratio = has_extreme.sum() / len(target)
    base = np.abs(pred - target).mean()
    return lambda_base * base + lambda_ext * _extreme_mae_numpy(pred, target, threshold) * ratio


@pytest.fixture
def fields(rng):
    """10 fields of 8x8, one of which holds a few extreme pixels (as rare as in seed 002)."""
    target = rng.gamma(0.6, 2.0, size=(10, 8, 8)).astype(np.float32)
    target = np.minimum(target, THRESHOLD - 1)
    target[3, 2:4, 5:7] = rng.uniform(15, 40, size=(2, 2))
    pred = (target + rng.normal(0, 1.0, size=target.shape)).astype(np.float32)
    return pred, target


def test_extreme_mae_matches_float64(fields):
    pred, target = fields
    got = float(losses.extreme_mae(pred, target, threshold=THRESHOLD))
    assert got == pytest.approx(_extreme_mae_numpy(pred, target, THRESHOLD), rel=1e-5)


def test_extreme_mae_averages_per_sample_not_per_pixel(rng):
    target = np.zeros((2, 4, 4), np.float32)
    target[0, 0, 0] = 20.0  # one extreme pixel, error 4
    target[1] = 20.0  # sixteen extreme pixels, error 1 each
    pred = target.copy()
    pred[0, 0, 0] -= 4.0
    pred[1] -= 1.0
    # Per sample: (4 + 1) / 2 = 2.5; a pooled pixel mean would give (4 + 16) / 17 = 1.18.
    assert float(losses.extreme_mae(pred, target, threshold=THRESHOLD)) == pytest.approx(2.5)


def test_extreme_weighted_mae_has_no_batch_ratio_scaling(fields):
    """Regression test for the seed-002 bug: lambda_ext must act at full strength."""
    pred, target = fields
    got = float(
        losses.extreme_weighted_mae(
            pred, target, threshold=THRESHOLD, lambda_base=1.0, lambda_ext=5.0
        )
    )
    expected = np.abs(pred.astype(np.float64) - target).mean() + 5.0 * _extreme_mae_numpy(
        pred, target, THRESHOLD
    )
    assert got == pytest.approx(expected, rel=1e-5)
    seed = _seed_ratio_scaled(pred, target, THRESHOLD, 1.0, 5.0)
    assert abs(got - seed) > 0.1 * got, "the test data must tell the two formulas apart"
    # The derivative with respect to lambda_ext is the extreme MAE itself, not a tenth of it.
    d_lambda = jax.grad(
        lambda lam: losses.extreme_weighted_mae(
            pred, target, threshold=THRESHOLD, lambda_base=1.0, lambda_ext=lam
        )
    )(5.0)
    assert float(d_lambda) == pytest.approx(_extreme_mae_numpy(pred, target, THRESHOLD), rel=1e-5)


def test_batch_without_extremes_is_finite_with_finite_gradient(rng):
    target = rng.uniform(0, 5, size=(4, 6, 6)).astype(np.float32)
    pred = target + 0.5
    value, grad = jax.value_and_grad(
        lambda p: losses.extreme_weighted_mae(
            p, target, threshold=THRESHOLD, lambda_base=1.0, lambda_ext=5.0
        )
    )(pred)
    assert float(value) == pytest.approx(0.5)
    assert np.all(np.isfinite(grad))
    assert float(losses.extreme_mae(pred, target, threshold=THRESHOLD)) == 0.0


def test_extreme_gradient_only_touches_extreme_samples(fields):
    pred, target = fields
    grad = jax.grad(lambda p: losses.extreme_mae(p, target, threshold=THRESHOLD))(pred)
    assert np.count_nonzero(np.asarray(grad)) == np.count_nonzero(target > THRESHOLD)


def test_jit_matches_eager(fields):
    pred, target = fields
    f = lambda p, t: losses.extreme_weighted_mae(
        p, t, threshold=THRESHOLD, lambda_base=1.0, lambda_ext=5.0
    )
    np.testing.assert_allclose(jax.jit(f)(pred, target), f(pred, target), rtol=1e-6)


def test_negative_weight_and_shape_errors(fields):
    pred, target = fields
    with pytest.raises(
        ValueError, match="extreme_weighted_mae: `lambda_ext` must be finite and >= 0"
    ):
        losses.extreme_weighted_mae(pred, target, threshold=1.0, lambda_base=1.0, lambda_ext=-1.0)
    with pytest.raises(ValueError, match="extreme_mae: `pred` has shape"):
        losses.extreme_mae(pred[:, :4], target, threshold=1.0)
    with pytest.raises(ValueError, match="`pred` must have at least 2 axes"):
        losses.extreme_mae(pred[0, 0], target[0, 0], threshold=1.0)


def test_coarsen_matches_numpy_block_mean(rng):
    field = rng.gamma(1.0, 1.0, size=(2, 8, 12)).astype(np.float32)
    expected = field.astype(np.float64).reshape(2, 2, 4, 3, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(losses.coarsen(field, 4), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="not divisible by `factor`=5"):
        losses.coarsen(field, 5)


def test_mass_conservation_zero_for_conserving_field_and_positive_otherwise(rng):
    coarse = rng.gamma(1.0, 1.0, size=(3, 2, 2)).astype(np.float32)
    # Redistribute mass inside each 4x4 block: the block means stay those of `coarse`.
    fine = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    wiggle = rng.normal(size=fine.shape).astype(np.float32)
    wiggle -= np.repeat(np.repeat(wiggle.reshape(3, 2, 4, 2, 4).mean(axis=(2, 4)), 4, 1), 4, 2)
    conserving = fine + 0.1 * wiggle
    np.testing.assert_allclose(
        losses.mass_conservation(conserving, coarse, factor=4), np.zeros(3), atol=1e-6
    )
    shifted = losses.mass_conservation(conserving + 0.3, coarse, factor=4)
    np.testing.assert_allclose(shifted, np.full(3, 0.3), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`coarsen\(pred, factor\)` has shape"):
        losses.mass_conservation(conserving, coarse[:, :1], factor=4)
