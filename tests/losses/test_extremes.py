import jax
import jax.numpy as jnp
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


def test_mass_conservation_errors_name_the_callers_arguments():
    """Not `coarsen: field`: the argument the user passed, its shape, in one line."""
    pred, coarse = np.zeros((3, 10, 8), np.float32), np.zeros((3, 2, 2), np.float32)
    cases = [
        (
            dict(pred=pred, coarse_target=coarse, factor=4),
            "mass_conservation: `pred` has shape (3, 10, 8), whose spatial shape (10, 8) is not "
            "divisible by `factor`=4.",
        ),
        (
            dict(pred=pred[0], coarse_target=coarse, factor=4),
            "mass_conservation: `pred` must have at least 3 axes, got shape (10, 8).",
        ),
        (
            dict(pred=pred[:, :8], coarse_target=coarse[:, :1], factor=4),
            "mass_conservation: `coarse_target` has shape (3, 1, 2) but `pred` of shape "
            "(3, 8, 8) coarsened by `factor`=4 has shape (3, 2, 2); they must be equal (no "
            "broadcasting).",
        ),
        (
            dict(pred=pred[:, :8], coarse_target=coarse, factor=0),
            "mass_conservation: `factor` must be a positive int, got 0.",
        ),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError) as info:
            losses.mass_conservation(**arguments)
        assert str(info.value) == message


# ----------------------------------------------------------------------------- the fast kernel
# extreme_mae / extreme_weighted_mae are a one-pass per-sample reduction with an analytic
# custom_vjp; these tests hold them to float64 NumPy and to plain-jnp autodiff.


def _weighted_mae64(pred, target, threshold, lambda_base, lambda_ext):
    """Float64 value and gradient w.r.t. pred, derived by hand (ties: d|e|/de = +1 at 0)."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    batch = len(p)
    error = (p - t).reshape(batch, -1)
    extreme = t.reshape(batch, -1) > threshold
    counts = extreme.sum(axis=1)
    has = counts > 0
    weights = np.where(has, 1.0 / (np.maximum(counts, 1) * max(has.sum(), 1)), 0.0)
    value = lambda_base * np.abs(error).mean() + lambda_ext * np.sum(
        weights * np.where(extreme, np.abs(error), 0.0).sum(axis=1)
    )
    pixel = lambda_base / error.size + lambda_ext * np.where(extreme, weights[:, None], 0.0)
    return value, (np.where(error >= 0, 1.0, -1.0) * pixel).reshape(p.shape)


def _naive_weighted_mae(pred, target, threshold, lambda_base, lambda_ext):
    """The pre-kernel jnp formulas, differentiated by JAX."""
    axes = tuple(range(1, pred.ndim))
    extreme = target > threshold
    counts = jnp.sum(extreme, axis=axes)
    sums = jnp.sum(jnp.where(extreme, jnp.abs(pred - target), 0.0), axis=axes)
    has = counts > 0
    per_sample = jnp.where(has, sums / jnp.maximum(counts, 1), 0.0)
    ext = jnp.sum(per_sample) / jnp.maximum(jnp.sum(has), 1)
    return lambda_base * jnp.mean(jnp.abs(pred - target)) + lambda_ext * ext


def _rain(rng, shape):
    """Rain-like fields: rare extremes above THRESHOLD, every third sample has none."""
    target = rng.gamma(0.6, 2.0, size=shape).astype(np.float32)
    target[::3] = np.minimum(target[::3], THRESHOLD - 1)
    pred = (target + rng.normal(0, 1.0, size=shape)).astype(np.float32)
    return pred, target


_weighted_and_grad = jax.jit(
    jax.value_and_grad(
        lambda p, t: losses.extreme_weighted_mae(
            p, t, threshold=THRESHOLD, lambda_base=1.0, lambda_ext=5.0
        )
    )
)


def test_extreme_weighted_mae_matches_float64_at_a_million_pixels(rng):
    # 16 fields of 256 x 257: 64 full blocks of the one-pass sum and a ragged tail per field.
    pred, target = _rain(rng, (16, 256, 257))
    value, grad = _weighted_and_grad(pred, target)
    ref_value, ref_grad = _weighted_mae64(pred, target, THRESHOLD, 1.0, 5.0)
    assert float(value) == pytest.approx(ref_value, rel=1e-5)
    error = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad)) / np.max(np.abs(ref_grad))
    assert error < 1e-5


@pytest.mark.parametrize("shape", [(5, 3, 4), (6, 2, 1100)])
def test_extreme_gradients_match_plain_jnp_autodiff(rng, shape):
    """Pred, target and both weights, with ties (pred == target) and extreme-free samples."""
    pred, target = _rain(rng, shape)
    target[1, 0, :2] = [12.0, 30.0]
    pred.reshape(-1)[::7] = target.reshape(-1)[::7]  # ties: d|e|/de must be +1 as in jnp.abs
    args = (pred, target, THRESHOLD, 1.0, 5.0)
    fast = lambda p, t, lb, le: losses.extreme_weighted_mae(
        p, t, threshold=THRESHOLD, lambda_base=lb, lambda_ext=le
    )
    naive = lambda p, t, lb, le: _naive_weighted_mae(p, t, THRESHOLD, lb, le)
    got = jax.jit(jax.value_and_grad(fast, argnums=(0, 1, 2, 3)))(*args[:2], *args[3:])
    expected = jax.jit(jax.value_and_grad(naive, argnums=(0, 1, 2, 3)))(*args[:2], *args[3:])
    assert float(got[0]) == pytest.approx(float(expected[0]), rel=1e-5)
    for g, e in zip(got[1], expected[1], strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_extreme_mae_without_extremes_at_size_is_zero_with_zero_gradient(rng):
    target = rng.uniform(0, THRESHOLD, size=(8, 128, 129)).astype(np.float32)
    pred = rng.normal(size=target.shape).astype(np.float32)
    value, grad = jax.value_and_grad(lambda p: losses.extreme_mae(p, target, threshold=THRESHOLD))(
        pred
    )
    assert float(value) == 0.0
    assert not np.any(np.asarray(grad))


def test_extreme_mae_under_vmap_and_traced_threshold(fields):
    """Per-sample values via vmap (the cVAE metric) and a threshold traced under jit."""
    pred, target = fields
    per_sample = jax.vmap(lambda p, t: losses.extreme_mae(p[None], t[None], threshold=THRESHOLD))(
        pred, target
    )
    expected = [
        _extreme_mae_numpy(p[None], t[None], THRESHOLD) for p, t in zip(pred, target, strict=True)
    ]
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5)
    traced = jax.jit(jax.value_and_grad(lambda th: losses.extreme_mae(pred, target, threshold=th)))
    value, d_threshold = traced(jnp.float32(THRESHOLD))
    assert float(value) == pytest.approx(_extreme_mae_numpy(pred, target, THRESHOLD), rel=1e-5)
    assert float(d_threshold) == 0.0


def test_extreme_weighted_mae_writes_no_full_size_temporary():
    pred = jnp.zeros((16, 256, 257))
    compiled = _weighted_and_grad.lower(pred, pred).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < pred.nbytes // 4
