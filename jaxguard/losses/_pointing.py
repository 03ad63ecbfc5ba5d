"""Point-regression loss for next-object pointing (seed 004)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxguard import _checks

_NORMS = ("l2", "l1")


def distance_hinge(
    pred: jax.Array, target: jax.Array, *, threshold: float, norm: str = "l2"
) -> jax.Array:
    """Quadratic-near, linear-far distance loss, continuous in value and slope.

    With `d` the distance between predicted and true point and `tau = threshold`::

        loss = d**2                   if d <= tau
               2 * tau * d - tau**2   if d >  tau

    i.e. `2 * optax.losses.huber_loss(d, delta=tau)`. Both pieces meet at
    `d = tau` with value `tau**2` and slope `2 * tau`. The seed-004 version used
    `tau * d + tau**2` for the far piece, which jumps by `tau**2` at the threshold
    and halves the slope there: an error just beyond the threshold cost twice as
    much as one just inside it, and pulled half as hard.

    The seed measured `d` as the L1 distance `|dx| + |dy|`; that is available as
    `norm="l1"`. The default is the Euclidean distance, the one its pixel errors
    and radii were quoted in.

    Scale: `d` is computed without squaring the coordinates, so the far branch is right
    for any distance float32 holds (tested at 1e-30, 1 and 1e30 against float64); the loss
    is `inf` only where `2 * tau * d` itself exceeds 3.4e38, and the near branch `d**2`
    underflows to 0 where it is below float32's smallest number (about 1e-38).

    Args:
      pred: predicted points, `[batch, 2]` as `(x, y)` in normalised coordinates.
      target: true points, same shape and units.
      threshold: `tau`, the radius of the quadratic zone in normalised units, `> 0`.
      norm: `"l2"` (Euclidean) or `"l1"`.

    Returns:
      `[batch]`.
    """
    squared, distance, far = split_distance("distance_hinge", pred, target, threshold, norm)
    # tau * (2 d - tau), not 2 tau d - tau**2: no inf - inf (NaN) where both overflow.
    return jnp.where(far, threshold * (2.0 * distance - threshold), squared)


def split_distance(
    fn: str, pred: jax.Array, target: jax.Array, threshold: float, norm: str, *, inclusive=False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Checked `(d**2, d, far)` of point pairs: the pieces of a threshold distance loss.

    `d` is the `norm` distance between `pred` and `target`. `far` is `d > threshold`
    (`d >= threshold` when `inclusive`). `d` is exact where `far` and clamped to the
    threshold elsewhere, so its gradient stays finite at an exact hit (`d = 0`); a loss
    built on these pieces reads `d` only in its far branch and `d**2` in its near one.
    The Euclidean `d` squares no coordinate, so it is finite for any coordinates float32
    holds; `d**2` overflows to `inf` beyond `d` of about 1.8e19, where only the far branch
    is read.
    `distance_hinge` is one such loss; the pointer task's reproduction of seed 004's
    discontinuous hinge is another.

    Args:
      fn: the caller's name, used in error messages.
      pred: `[batch, 2]` predicted points `(x, y)`, floating.
      target: `[batch, 2]` true points, same shape and units.
      threshold: `tau`, `> 0`, in the units of the points.
      norm: `"l2"` (Euclidean) or `"l1"` (`|dx| + |dy|`).
      inclusive: whether `d == threshold` counts as far.

    Returns:
      `(squared, distance, far)`, each `[batch]`: `d**2`, `d` (clamped where not far) and
      the boolean far mask.

    Raises:
      ValueError: naming `fn` and the argument, on a non-floating input, a shape mismatch, a
        shape other than `[batch, 2]`, a threshold that is not `> 0`, or an unknown norm.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxguard import losses
      >>> pred, target = jnp.array([[0.3, 0.4], [0.0, 0.05]]), jnp.zeros((2, 2))
      >>> squared, distance, far = losses.split_distance("demo", pred, target, 0.1, "l2")
      >>> [round(float(v), 4) for v in distance], far.tolist()
      ([0.5, 0.1], [True, False])
    """
    _checks.check_floating(fn, pred=pred, target=target)
    _checks.check_same_shape(fn, pred=pred, target=target)
    _checks.check_rank(fn, "pred", pred, 2)
    _checks.check_last_dim(fn, "pred", pred, 2)
    _checks.check_positive(fn, "threshold", threshold)
    if norm not in _NORMS:
        raise ValueError(f"{fn}: `norm` must be one of {_NORMS}, got {norm!r}.")
    delta = pred - target
    beyond = jnp.greater_equal if inclusive else jnp.greater
    if norm == "l1":
        distance = jnp.sum(jnp.abs(delta), axis=-1)
        return distance**2, distance, beyond(distance, threshold)
    squared = jnp.sum(delta**2, axis=-1)
    # d squares no coordinate (they overflow beyond 1.8e19); its gradient is finite, 0 at an
    # exact hit (d = 0, in the quadratic branch anyway).
    exact = _euclidean(delta[..., 0], delta[..., 1])
    far = beyond(exact, threshold)
    return squared, jnp.where(far, exact, threshold), far


@jax.custom_jvp
def _euclidean(dx: jax.Array, dy: jax.Array) -> jax.Array:
    """`sqrt(dx**2 + dy**2)` without squaring the coordinates, with gradient `(dx, dy) / d`.

    `m * sqrt((dx / m)**2 + (dy / m)**2)` with `m = max(|dx|, |dy|)`: the quotients are at
    most 1. The gradient is written out (0 at d = 0): autodiff of this formula would
    multiply by `m` before dividing by it, underflowing to 0 at 1e-30. Not `jnp.hypot`: in
    jax 0.10 its gradient is NaN at 1e-30 and wrong at 1e30 (`d/dy hypot(1e30, 2e30)` gave
    1.118 for 0.894).
    """
    largest = jnp.maximum(jnp.abs(dx), jnp.abs(dy))
    unit = jnp.where(largest > 0, largest, 1.0)
    return unit * jnp.sqrt((dx / unit) ** 2 + (dy / unit) ** 2)


@_euclidean.defjvp
def _euclidean_jvp(primals, tangents):
    (dx, dy), (tangent_x, tangent_y) = primals, tangents
    distance = _euclidean(dx, dy)
    safe = jnp.where(distance > 0, distance, 1.0)
    return distance, dx / safe * tangent_x + dy / safe * tangent_y
