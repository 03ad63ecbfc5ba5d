"""Binary cross-entropy with a positive-class weight, which optax lacks."""

from __future__ import annotations

import jax

from jaxguard import _checks


def weighted_sigmoid_binary_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, pos_weight: float | jax.Array = 1.0
) -> jax.Array:
    """Sigmoid binary cross-entropy whose positive term is multiplied by `pos_weight`.

    `-(pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))`, the
    convention of PyTorch's `BCEWithLogitsLoss(pos_weight=...)`. With
    `pos_weight = (1 - rate) / rate` (see `pos_weight_from_rate`) positives and
    negatives contribute equally in expectation. `pos_weight = 1` is
    `optax.losses.sigmoid_binary_cross_entropy`.

    Args:
      logits: `[...]`.
      labels: targets in `[0, 1]`, same shape as `logits`.
      pos_weight: weight of the positive term, `> 0`; a scalar or an array that
        broadcasts against `logits` (one weight per class, say).

    Returns:
      `[...]`, same shape as `logits`.
    """
    fn = "weighted_sigmoid_binary_cross_entropy"
    _checks.check_floating(fn, logits=logits, labels=labels)
    _checks.check_same_shape(fn, logits=logits, labels=labels)
    _checks.check_positive(fn, "pos_weight", pos_weight)
    _checks.check_nonnegative_array(fn, "pos_weight", pos_weight)
    # -log(sigmoid(x)) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(x): finite for
    # large |x|, and without the cancellation of the shorter form x + softplus(-x) at x << 0.
    return pos_weight * labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)


def pos_weight_from_rate(positive_rate: float) -> float:
    """`pos_weight = (1 - rate) / rate` that balances a class with the given positive rate.

    For the seed-004 done flag (3% positives) this is 32.3.

    Args:
      positive_rate: fraction of positive examples, in `(0, 1)`.

    Returns:
      The weight, a Python float.
    """
    rate = float(positive_rate)
    if not 0.0 < rate < 1.0:
        raise ValueError(
            f"pos_weight_from_rate: `positive_rate` must lie strictly between 0 and 1, got {rate} "
            "(a split with no positives or no negatives cannot be balanced)."
        )
    return (1.0 - rate) / rate
