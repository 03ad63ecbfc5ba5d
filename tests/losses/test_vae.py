import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxguard import losses


def _kl_numpy(mu, logvar, mu_p=0.0, logvar_p=0.0):
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    var, var_p = np.exp(logvar), np.exp(logvar_p)
    return 0.5 * (np.log(var_p / var) + (var + (mu - mu_p) ** 2) / var_p - 1.0)


def test_kl_per_dim_matches_float64_and_sums_to_total(rng):
    mu = rng.normal(size=(4, 6)).astype(np.float32)
    logvar = rng.normal(0, 0.5, size=(4, 6)).astype(np.float32)
    per_dim = losses.gaussian_kl_per_dim(mu, logvar)
    assert per_dim.shape == (4, 6)
    np.testing.assert_allclose(per_dim, _kl_numpy(mu, logvar), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses.gaussian_kl(mu, logvar), per_dim.sum(axis=-1), rtol=1e-6)


def test_kl_matches_numerical_integration():
    mu, logvar, mu_p, logvar_p = 0.7, -0.4, -0.2, 0.3
    q = stats.norm(mu, np.exp(0.5 * logvar))
    p = stats.norm(mu_p, np.exp(0.5 * logvar_p))
    expected, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), -12, 12)
    got = losses.gaussian_kl_per_dim(
        jnp.array([[mu]]), jnp.array([[logvar]]), jnp.array([[mu_p]]), jnp.array([[logvar_p]])
    )
    assert float(got[0, 0]) == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_at_the_prior_and_precise_near_it():
    zeros = jnp.zeros((2, 3))
    np.testing.assert_array_equal(losses.gaussian_kl(zeros, zeros), np.zeros(2))
    tiny = jnp.full((1, 1), 1e-4)
    # 0.5 * (exp(x) - 1 - x) ~ x^2 / 4 = 2.5e-9; exp(x) - 1 - x in float32 would give 0 or 6e-8.
    got = float(losses.gaussian_kl_per_dim(jnp.zeros((1, 1)), tiny)[0, 0])
    assert got == pytest.approx(2.5e-9, rel=5e-3)


def test_kl_gradient_and_jit(rng):
    mu = rng.normal(size=(3, 2)).astype(np.float32)
    logvar = rng.normal(size=(3, 2)).astype(np.float32)
    g_mu, g_lv = jax.grad(lambda m, v: losses.gaussian_kl(m, v).sum(), argnums=(0, 1))(mu, logvar)
    np.testing.assert_allclose(g_mu, mu, rtol=1e-6)
    np.testing.assert_allclose(g_lv, 0.5 * np.expm1(logvar), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        jax.jit(losses.gaussian_kl)(mu, logvar), losses.gaussian_kl(mu, logvar)
    )


def test_kl_argument_errors():
    with pytest.raises(ValueError, match="`mean` must have rank 2"):
        losses.gaussian_kl(jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="`mean` has shape \\(2, 3\\) but `logvar` has shape"):
        losses.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="both `prior_mean` and `prior_logvar`"):
        losses.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), prior_mean=jnp.zeros((2, 3)))


def test_beta_warmup_reaches_beta_at_the_end_and_stays():
    schedule = losses.beta_warmup(0.01, 150)
    values = [float(schedule(s)) for s in (0, 75, 150, 10_000)]
    np.testing.assert_allclose(values, [0.0, 0.005, 0.01, 0.01], rtol=1e-6)
    assert float(jax.jit(schedule)(jnp.int32(30))) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="beta_warmup: `beta` must be finite and >= 0"):
        losses.beta_warmup(-0.1, 10)
