"""Variational-autoencoder terms: diagonal-Gaussian KL and the beta warm-up schedule.

The model returns `(mean, logvar)`; the KL is a pure function of them (it is not
stored inside the encoder). The seed-002 cVAE warmed beta up over 30 epochs but
stopped at epoch 25, so its best model trained with beta ~ 0.017 of the target;
`beta_warmup` is an optax schedule of the step so the harness can check that the
warm-up ends before early stopping may fire.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxguard import _checks


def gaussian_kl_per_dim(
    mean: jax.Array,
    logvar: jax.Array,
    prior_mean: jax.Array | None = None,
    prior_logvar: jax.Array | None = None,
) -> jax.Array:
    """KL(q || p) per latent dimension for diagonal Gaussians, in nats.

    With `q = N(mean, exp(logvar))` and `p = N(prior_mean, exp(prior_logvar))`
    (standard normal when the prior is omitted)::

        KL_d = 0.5 * (exp(logvar - prior_logvar)
                      + (mean - prior_mean)**2 / exp(prior_logvar)
                      - 1 - (logvar - prior_logvar))

    Args:
      mean: posterior means, `[batch, latent]`.
      logvar: posterior log-variances, `[batch, latent]`.
      prior_mean: prior means, `[batch, latent]` (a conditional prior), or None.
      prior_logvar: prior log-variances, `[batch, latent]`, or None; give both or neither.

    Returns:
      `[batch, latent]`, every entry `>= 0`.
    """
    fn = "gaussian_kl_per_dim"
    _checks.check_floating(fn, mean=mean, logvar=logvar)
    _checks.check_rank(fn, "mean", mean, 2)
    _checks.check_same_shape(fn, mean=mean, logvar=logvar)
    if (prior_mean is None) != (prior_logvar is None):
        raise ValueError(f"{fn}: give both `prior_mean` and `prior_logvar`, or neither.")
    if prior_mean is None:
        prior_mean = jnp.zeros_like(mean)
        prior_logvar = jnp.zeros_like(logvar)
    _checks.check_same_shape(fn, mean=mean, prior_mean=prior_mean, prior_logvar=prior_logvar)
    logvar_diff = logvar - prior_logvar
    # expm1(x) - x instead of exp(x) - 1 - x: no cancellation when logvar is near the prior's.
    variance_term = jnp.expm1(logvar_diff) - logvar_diff
    return 0.5 * (variance_term + (mean - prior_mean) ** 2 * jnp.exp(-prior_logvar))


def gaussian_kl(
    mean: jax.Array,
    logvar: jax.Array,
    prior_mean: jax.Array | None = None,
    prior_logvar: jax.Array | None = None,
) -> jax.Array:
    """Total KL(q || p) of diagonal Gaussians per example, summed over latent dimensions.

    Args:
      mean: posterior means, `[batch, latent]`.
      logvar: posterior log-variances, `[batch, latent]`.
      prior_mean: prior means, `[batch, latent]`, or None for a standard normal prior.
      prior_logvar: prior log-variances, `[batch, latent]`, or None.

    Returns:
      `[batch]`, in nats.
    """
    return jnp.sum(gaussian_kl_per_dim(mean, logvar, prior_mean, prior_logvar), axis=-1)


def beta_warmup(beta: float, warmup_steps: int, *, start: float = 0.0) -> optax.Schedule:
    """Linear warm-up of the KL weight from `start` to `beta` over `warmup_steps`, then flat.

    Use it as the weight of the KL term: `Term(kl_fn, weight=beta_warmup(0.01, 15 *
    steps_per_epoch))`. The seed-002 fix reached beta = 0.01 after 15 epochs.

    Args:
      beta: final weight, `>= 0`.
      warmup_steps: steps to reach it, `>= 0` (0 means `beta` from the first step).
      start: weight at step 0, `>= 0`.

    Returns:
      An optax schedule `step -> weight`.
    """
    _checks.check_positive("beta_warmup", "beta", beta, allow_zero=True)
    _checks.check_positive("beta_warmup", "start", start, allow_zero=True)
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"beta_warmup: `warmup_steps` must be an int >= 0, got {warmup_steps!r}.")
    return optax.schedules.linear_schedule(start, beta, warmup_steps)
