"""Argument checks shared by losses and metrics, and the value range of user input arrays.

Every check runs at trace time on static shapes and dtypes, so it costs nothing
inside a compiled step (`input_value_problem` runs on NumPy arrays, once, when data are
read). Failures raise with a message that names the function
and the argument, e.g. ``variance_penalty: `pred` has shape (3,) but `target`
has shape (4,); they must be equal``.
"""

from __future__ import annotations

import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np


def check_same_shape(fn: str, **arrays: jax.Array) -> None:
    """Fails unless every named array has the same shape (no silent broadcasting)."""
    names = list(arrays)
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    first = names[0]
    for name in names[1:]:
        if shapes[name] != shapes[first]:
            raise ValueError(
                f"{fn}: `{first}` has shape {shapes[first]} but `{name}` has shape "
                f"{shapes[name]}; they must be equal (no broadcasting)."
            )
    chex.assert_equal_shape(list(arrays.values()), custom_message=fn)


def check_rank(fn: str, name: str, array: jax.Array, rank: int | set[int]) -> None:
    """Fails unless `array` has the given rank (or one of the given ranks)."""
    ranks = {rank} if isinstance(rank, int) else set(rank)
    if jnp.ndim(array) not in ranks:
        wanted = " or ".join(str(r) for r in sorted(ranks))
        raise ValueError(
            f"{fn}: `{name}` must have rank {wanted}, got shape {jnp.shape(array)} "
            f"(rank {jnp.ndim(array)})."
        )


def check_min_rank(fn: str, name: str, array: jax.Array, min_rank: int) -> None:
    """Fails unless `array` has at least `min_rank` axes."""
    if jnp.ndim(array) < min_rank:
        raise ValueError(
            f"{fn}: `{name}` must have at least {min_rank} axes, got shape {jnp.shape(array)}."
        )


def check_last_dim(fn: str, name: str, array: jax.Array, size: int) -> None:
    """Fails unless the trailing axis of `array` has `size` entries."""
    if jnp.ndim(array) == 0 or jnp.shape(array)[-1] != size:
        raise ValueError(
            f"{fn}: `{name}` must end in an axis of size {size}, got shape {jnp.shape(array)}."
        )


def check_floating(fn: str, **arrays: jax.Array) -> None:
    """Fails unless every named array has a floating dtype (ints would truncate gradients)."""
    for name, a in arrays.items():
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise TypeError(f"{fn}: `{name}` must have a floating dtype, got {jnp.result_type(a)}.")


def _concrete(value) -> float | None:
    """The Python value of a scalar hyper-parameter, or None when it is traced."""
    if isinstance(value, numbers.Number):
        return float(value)
    if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0:
        return float(value)
    return None


def check_positive(fn: str, name: str, value, *, allow_zero: bool = False) -> None:
    """Fails when a concrete scalar hyper-parameter is negative (or zero)."""
    v = _concrete(value)
    if v is None:
        return
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: `{name}` must be finite and {bound}, got {v}.")


def check_in_range(fn: str, name: str, value, lo: float, hi: float) -> None:
    """Fails when a concrete scalar hyper-parameter is outside [lo, hi]."""
    v = _concrete(value)
    if v is None:
        return
    if not lo <= v <= hi:
        raise ValueError(f"{fn}: `{name}` must lie in [{lo}, {hi}], got {v}.")


def check_nonnegative_array(fn: str, name: str, array) -> None:
    """Fails when a concrete (non-traced) weight array holds a negative or non-finite entry."""
    if isinstance(array, jax.core.Tracer):
        return
    values = np.asarray(array)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{fn}: `{name}` must be finite and >= 0, got {values[index]} at index {index}."
        )


def check_ensemble(
    fn: str, ensemble: jax.Array, target: jax.Array, *, min_members: int, hint: str = ""
) -> None:
    """Fails unless `ensemble` is `[batch, M, *field]` with `M >= min_members`, `target` is
    `[batch, *field]`, and both are floating. Shared by the losses and `EnsembleMetrics`."""
    check_floating(fn, ensemble=ensemble, target=target)
    check_min_rank(fn, "ensemble", ensemble, 2)
    check_min_rank(fn, "target", target, 1)
    shape = np.shape(ensemble)
    members = shape[1]
    if members < min_members:
        raise ValueError(
            f"{fn}: `ensemble` has {members} member(s) on axis 1 (shape {shape}); it needs at "
            f"least {min_members}{hint}."
        )
    member_shape = shape[:1] + shape[2:]
    if np.shape(target) != member_shape:
        raise ValueError(
            f"{fn}: `ensemble` has shape {shape}, so each member is {member_shape}, but "
            f"`target` has shape {np.shape(target)}; they must be equal (no broadcasting)."
        )


# Inputs read from user files are used unnormalised by some tasks (the cVAE's precipitation,
# the optical-depth targets) and are squared in losses and variances; summed over up to ~1e8
# entries those squares stay below float32's maximum (3.4e38) only for |value| <= ~1.8e15.
MAX_INPUT_MAGNITUDE = 1e15


def _first_index(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def input_value_problem(name: str, values: np.ndarray) -> str | None:
    """What is wrong with the values of a user array, in a few words, or None if nothing.

    Args:
      name: the array's name as the user knows it (e.g. `array 'x'`).
      values: a real numeric NumPy array of any shape.

    Returns:
      `"{name} holds K NaN or infinite values (first at index (i, j, ...))"`, the same for
      values beyond `+-MAX_INPUT_MAGNITUDE`, or None when every value is finite and in range.
    """
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        return (
            f"{name} holds {int(nonfinite.sum())} NaN or infinite values (first at index "
            f"{_first_index(nonfinite)})"
        )
    huge = np.abs(values) > MAX_INPUT_MAGNITUDE
    if huge.any():
        index = _first_index(huge)
        return (
            f"{name} holds {int(huge.sum())} values beyond ±{MAX_INPUT_MAGNITUDE:g} (first at "
            f"index {index}: {float(values[index]):g}); inputs must stay within that range so "
            "that their squares sum to a finite float32"
        )
    return None
