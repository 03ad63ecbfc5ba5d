"""Tests for the ensemble scoring-rule losses against scoringrules and float64 NumPy."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scoringrules as sr

from jaxguard import losses

_MEMBERS = 6
_SHAPE = (4, _MEMBERS, 6, 5)


def _rain(rng, shape, dry=0.6):
    """Gamma(0.5, 8) rain with a share `dry` of exact zeros (float32)."""
    wet = rng.gamma(0.5, 8.0, size=shape)
    return np.where(rng.random(shape) < dry, 0.0, wet).astype(np.float32)


def _rain_pair(rng, shape=_SHAPE):
    """Rain target and ensemble: many exact zeros on both sides, so ties are everywhere."""
    return _rain(rng, shape), _rain(rng, shape[:1] + shape[2:])


def _crps64(ensemble, target, fair):
    """Float64 pairwise CRPS: mean_i |x_i - y| - c sum_{i,j} |x_i - x_j|, `[batch, *field]`."""
    x, y = np.asarray(ensemble, np.float64), np.asarray(target, np.float64)
    m = x.shape[1]
    skill = np.abs(x - y[:, None]).mean(axis=1)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def _energy64(ensemble, target, fair):
    """Float64 pairwise energy score over the flattened field, `[batch]`."""
    x = np.asarray(ensemble, np.float64).reshape(*ensemble.shape[:2], -1)
    y = np.asarray(target, np.float64).reshape(len(target), -1)
    m = x.shape[1]
    skill = np.linalg.norm(x - y[:, None], axis=-1).mean(axis=1)
    pairs = np.linalg.norm(x[:, :, None] - x[:, None, :], axis=-1).sum(axis=(1, 2))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.parametrize(("fair", "estimator"), [(True, "fair"), (False, "nrg")])
def test_crps_matches_scoringrules_and_float64_on_rain(rng, fair, estimator):
    ensemble, target = _rain_pair(rng)
    got = np.asarray(losses.crps_ensemble(ensemble, target, fair=fair))
    assert got.shape == target.shape and got.dtype == np.float32
    reference = sr.crps_ensemble(
        target.astype(np.float64),
        ensemble.astype(np.float64),
        m_axis=1,
        estimator=estimator,
        backend="numpy",
    )
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, _crps64(ensemble, target, fair), rtol=1e-5, atol=1e-5)
    # The data must exercise ties: dry targets with several dry members.
    assert np.sum((target == 0)[:, None] & (ensemble == 0)) > 50


def test_fair_and_standard_crps_differ_by_the_pair_term(rng):
    ensemble, target = _rain_pair(rng)
    fair = np.asarray(losses.crps_ensemble(ensemble, target), np.float64)
    standard = np.asarray(losses.crps_ensemble(ensemble, target, fair=False), np.float64)
    # fair - standard = (c_std - c_fair) sum|x_i - x_j| < 0, zero only for a constant ensemble.
    x = ensemble.astype(np.float64)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    m = _MEMBERS
    np.testing.assert_allclose(
        fair - standard, pairs * (1 / (2 * m * m) - 1 / (2 * m * (m - 1))), atol=2e-5
    )
    assert np.all(fair[pairs > 0] < standard[pairs > 0])


def test_crps_single_member_standard_is_absolute_error(rng):
    ensemble, target = _rain_pair(rng, (3, 1, 4))
    np.testing.assert_allclose(
        losses.crps_ensemble(ensemble, target, fair=False), np.abs(ensemble[:, 0] - target)
    )


def test_crps_keeps_precision_at_a_large_mean(rng):
    """Members 1e4 +- 0.05: the pair term must not cancel against the mean in float32.

    Unshifted, the products (2k - M - 1) x_(k) are ~1e5 with float32 spacing ~0.01, and the
    CRPS (~0.01) came out 5% off; shifted by the middle member it is within 1e-6."""
    ensemble = (1e4 + 0.05 * rng.standard_normal((3, 16, 10))).astype(np.float32)
    target = (1e4 + 0.05 * rng.standard_normal((3, 10))).astype(np.float32)
    got = np.asarray(losses.crps_ensemble(ensemble, target))
    np.testing.assert_allclose(got, _crps64(ensemble, target, True), rtol=1e-5)


@pytest.mark.parametrize(("fair", "estimator"), [(True, "fair"), (False, "nrg")])
@pytest.mark.parametrize("members", [2, 5, 6])
def test_energy_score_matches_scoringrules_and_float64_on_rain(rng, fair, estimator, members):
    """Odd and even M: the pair loop counts offset M/2 once."""
    ensemble, target = _rain_pair(rng, (4, members, 6, 5))
    got = np.asarray(losses.energy_score(ensemble, target, fair=fair))
    assert got.shape == (4,) and got.dtype == np.float32
    reference = sr.es_ensemble(
        target.reshape(4, -1).astype(np.float64),
        ensemble.reshape(4, members, -1).astype(np.float64),
        m_axis=1,
        v_axis=2,
        estimator=estimator,
        backend="numpy",
    )
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    np.testing.assert_allclose(got, _energy64(ensemble, target, fair), rtol=1e-5)


def _finite_difference(fn, x, step=1e-6):
    """Central differences of a float64 scalar function of an array."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (fn(up) - fn(down)) / (2 * step)
    return grad


def _separated(rng, shape):
    """Continuous positive values at least 1e-3 apart: differentiable everywhere."""
    values = rng.permutation(np.arange(np.prod(shape)))
    return (0.5 + 0.37 * values + 0.01 * rng.random(values.shape)).reshape(shape)


@pytest.mark.parametrize("fair", [True, False])
def test_crps_gradient_matches_float64_finite_differences(rng, fair):
    x64 = _separated(rng, (2, 5, 3))
    y64 = _separated(rng, (2, 3)) + 0.123
    weights = rng.random((2, 3))  # a non-uniform cotangent
    grad = jax.grad(
        lambda e, t: jnp.sum(weights * losses.crps_ensemble(e, t, fair=fair)), argnums=(0, 1)
    )(x64.astype(np.float32), y64.astype(np.float32))
    loss64 = lambda e, t: np.sum(weights * _crps64(e, t, fair))
    np.testing.assert_allclose(
        grad[0], _finite_difference(lambda e: loss64(e, y64), x64), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        grad[1], _finite_difference(lambda t: loss64(x64, t), y64), rtol=1e-4, atol=1e-6
    )


def _crps_gradient64(ensemble, target, fair):
    """d CRPS / d x_i = s(x_i - y) / M - 2c sum_j sign(x_i - x_j), sign(0) = 0 for tied members
    and s(0) = +1 for a member equal to the target (jnp.abs's convention)."""
    x, y = np.asarray(ensemble, np.float64), np.asarray(target, np.float64)[:, None]
    m = x.shape[1]
    skill = np.where(x - y >= 0, 1.0, -1.0) / m
    pairs = np.sign(x[:, :, None] - x[:, None, :]).sum(axis=2)
    return skill - pairs / (m * (m - 1) if fair else m * m)


@pytest.mark.parametrize("fair", [True, False])
def test_crps_gradient_with_ties_gives_tied_members_equal_gradients(rng, fair):
    ensemble, target = _rain_pair(rng)
    grad = np.asarray(
        jax.grad(lambda e: jnp.sum(losses.crps_ensemble(e, target, fair=fair)))(ensemble)
    )
    np.testing.assert_allclose(grad, _crps_gradient64(ensemble, target, fair), atol=1e-6)
    # A sort-based gradient without tie handling would give the dry members of one pixel
    # different gradients depending on their index.
    dry = ensemble == 0
    for b, *pixel in zip(*np.nonzero(dry.sum(axis=1) >= 2), strict=True):
        tied = grad[(b, slice(None), *pixel)][dry[(b, slice(None), *pixel)]]
        assert np.ptp(tied) == 0.0


def _energy_gradient64(ensemble, target, fair):
    """d ES / d x_i = u(x_i - y) / M - 2c sum_j u(x_i - x_j), u(v) = v / ||v||, u(0) = 0."""
    x = np.asarray(ensemble, np.float64).reshape(*ensemble.shape[:2], -1)
    y = np.asarray(target, np.float64).reshape(len(target), 1, -1)
    m = x.shape[1]

    def unit(v):
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        return np.where(norm > 0, v / np.where(norm > 0, norm, 1.0), 0.0)

    pairs = unit(x[:, :, None] - x[:, None, :]).sum(axis=2)
    grad = unit(x - y) / m - pairs / (m * (m - 1) if fair else m * m)
    return grad.reshape(ensemble.shape)


@pytest.mark.parametrize("fair", [True, False])
def test_energy_gradient_matches_float64_finite_differences(rng, fair):
    x64 = _separated(rng, (2, 4, 3, 2))
    y64 = _separated(rng, (2, 3, 2)) + 0.123
    grad = jax.grad(lambda e: jnp.sum(losses.energy_score(e, y64.astype(np.float32), fair=fair)))(
        x64.astype(np.float32)
    )
    expected = _finite_difference(lambda e: np.sum(_energy64(e, y64, fair)), x64)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(expected, _energy_gradient64(x64, y64, fair), rtol=1e-6, atol=1e-8)


def test_energy_gradient_is_finite_where_members_and_target_coincide(rng):
    """All-dry examples (members == target == 0) and duplicated members: norms of 0."""
    ensemble, target = _rain_pair(rng, (3, 4, 5, 5))
    ensemble[0], target[0] = 0.0, 0.0
    ensemble[1, 1] = ensemble[1, 0]
    ensemble[2, :, 0, 0] = target[2, 0, 0] = 0.0
    value, grad = jax.value_and_grad(lambda e: jnp.sum(losses.energy_score(e, target)))(ensemble)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, _energy_gradient64(ensemble, target, True), atol=1e-6)
    assert not np.any(grad[0])


@pytest.mark.parametrize("loss", [losses.crps_ensemble, losses.energy_score])
def test_jit_matches_eager(rng, loss):
    ensemble, target = _rain_pair(rng)
    jitted = jax.jit(loss, static_argnames="fair")(ensemble, target, fair=True)
    with jax.disable_jit():
        eager = loss(ensemble, target, fair=True)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def _scores_once_traced(ensemble, target):
    return losses.crps_ensemble(ensemble, target), losses.energy_score(ensemble, target)


_scores_checked = jax.jit(chex.assert_max_traces(_scores_once_traced, n=1))


def test_jitted_scores_do_not_retrace_for_same_shapes(rng):
    for _ in range(3):
        ensemble, target = _rain_pair(rng)
        crps, energy = _scores_checked(ensemble, target)
        np.testing.assert_allclose(crps, _crps64(ensemble, target, True), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(energy, _energy64(ensemble, target, True), rtol=1e-5)


@pytest.mark.parametrize("loss", [losses.crps_ensemble, losses.energy_score])
def test_bad_input_names_the_argument(rng, loss):
    name = loss.__name__
    ensemble, target = _rain_pair(rng)
    with pytest.raises(ValueError, match=rf"{name}: `ensemble` has 1 member\(s\) on axis 1"):
        loss(ensemble[:, :1], target)
    # One member is fine for the standard estimator.
    assert np.all(np.isfinite(loss(ensemble[:, :1], target, fair=False)))
    with pytest.raises(
        ValueError,
        match=rf"{name}: `ensemble` has shape \(4, 6, 6, 5\), so each member is \(4, 6, 5\), "
        r"but `target` has shape \(4, 5, 6\)",
    ):
        loss(ensemble, target.reshape(4, 5, 6))
    with pytest.raises(ValueError, match="`ensemble` must have at least 2 axes"):
        loss(ensemble[:, 0, 0, 0], target[:, 0, 0])
    with pytest.raises(TypeError, match="`target` must have a floating dtype"):
        loss(ensemble, target.astype(np.int32))


_EXPLICIT_SHARDING_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jaxguard import losses

mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
rng = np.random.default_rng(0)
ensemble = np.where(rng.random((8, 5, 4, 4)) < 0.6, 0, rng.gamma(0.5, 8, (8, 5, 4, 4)))
target = np.where(rng.random((8, 4, 4)) < 0.6, 0, rng.gamma(0.5, 8, (8, 4, 4)))
ensemble, target = ensemble.astype(np.float32), target.astype(np.float32)
loss = lambda e, t: jnp.mean(losses.crps_ensemble(e, t)) + jnp.mean(losses.energy_score(e, t))
expected = jax.value_and_grad(loss, argnums=(0, 1))(ensemble, target)
with jax.set_mesh(mesh):
    sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (ensemble, target)]
    result = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*sharded)
for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
print("sharded ok")
"""


def test_scores_and_gradients_on_a_batch_sharded_over_four_devices():
    """Explicit sharding (the strictest mode) on 4 forced host devices, in a fresh process:
    values and gradients compile for a batch-sharded ensemble and match one device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _EXPLICIT_SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
