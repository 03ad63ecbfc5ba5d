"""Declare a loss as named, weighted terms instead of summing it by hand.

    loss = compose(
        mae=Term(absolute_error),
        variance=Term(variance_penalty, weight=0.5),
        kl=Term(gaussian_kl, inputs=("mean", "logvar"), weight=beta_warmup(0.01, 1500)),
    )
    total, terms = loss({"pred": p, "target": t, "mean": mu, "logvar": lv}, step=step)

`terms` holds every term's raw value, its weight at `step` and the weighted value,
so each is logged; `total` is the sum of the weighted values. The composite is a
pure function of arrays and works under `jax.jit`, `jax.grad` and
`jax.value_and_grad(..., has_aux=True)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Term:
    """One named loss term.

    Attributes:
      fn: a pure function of the arrays named in `inputs`, positionally. A scalar
        result is used as is; any other result holds per-example values on its
        leading axis `[batch, ...]` and is reduced to its mean, weighted per
        example when `example_weights` is set. Bind hyper-parameters with
        `functools.partial`.
      inputs: names of the arrays `fn` takes, looked up in the dict the composite
        is called with.
      weight: a float `>= 0` or an optax schedule `step -> weight` (warm-ups, ramps).
      example_weights: name of a `[batch]` array of per-example weights for the
        reduction (e.g. `overweight_high_targets`), or None for a plain mean.
      reference: optional plain version of what the term is meant to weigh, a function of the
        same `inputs` reduced the same way (e.g. `extreme_mae` for a term that rescales it).
        The composite then logs `name/reference` and `name/effective_weight = weighted /
        reference`, which equals `weight` unless `fn` rescales its value on the way (seed 002's
        bug multiplied the extreme MAE by the share of samples holding extremes, cutting its
        weight to a fifth); `jaxguard.guards.LossTermGuard` compares the two at run time.
    """

    fn: Callable[..., jax.Array]
    inputs: tuple[str, ...] = ("pred", "target")
    weight: optax.ScalarOrSchedule = 1.0
    example_weights: str | None = None
    reference: Callable[..., jax.Array] | None = None


def _reduce(name: str, values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Scalar from a term's value: the (weighted) mean over examples."""
    if values.ndim == 0:
        if weights is not None:
            raise ValueError(
                f"term {name!r}: `example_weights` is set but its function returned a scalar; "
                "it must return per-example values `[batch, ...]` to be weighted."
            )
        return values
    per_example = jnp.mean(values.reshape(values.shape[0], -1), axis=1)
    if weights is None:
        return jnp.mean(per_example)
    if weights.shape != per_example.shape:
        raise ValueError(
            f"term {name!r}: example weights have shape {weights.shape} but the term has "
            f"{per_example.shape[0]} examples; they must be `[batch]`."
        )
    # A batch whose weights are all zero contributes 0 rather than 0/0.
    return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-12)


def _call(name: str, fn: Callable[..., jax.Array], arrays: dict[str, jax.Array]) -> jax.Array:
    """`fn(*arrays.values())`; a broadcasting failure inside it becomes one line naming the
    term and its inputs' shapes (JAX's own names neither the term nor the inputs)."""
    try:
        return fn(*arrays.values())
    except (TypeError, ValueError) as error:
        # JAX says "Incompatible shapes for broadcasting" (jnp) or "... got incompatible
        # shapes for broadcasting" (lax); any other error is the function's own: re-raised.
        if "shapes for broadcasting" not in str(error):
            raise
        shapes = ", ".join(f"`{key}` {tuple(jnp.shape(a))}" for key, a in arrays.items())
        cause = " ".join(str(error).split())
        raise ValueError(
            f"term {name!r}: its inputs' shapes do not combine ({shapes}): {cause}"
        ) from error


@dataclasses.dataclass(frozen=True)
class CompositeLoss:
    """A weighted sum of named `Term`s; build it with `compose`."""

    terms: Mapping[str, Term]

    def weights(self, step: jax.typing.ArrayLike = 0) -> dict[str, jax.Array]:
        """Each term's weight at `step`."""
        return {
            name: jnp.asarray(term.weight(step) if callable(term.weight) else term.weight)
            for name, term in self.terms.items()
        }

    def __call__(
        self, inputs: Mapping[str, jax.Array], *, step: jax.typing.ArrayLike = 0
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Evaluates every term.

        Args:
          inputs: the arrays the terms name in their `inputs` and `example_weights`.
          step: the training step at which schedules are evaluated, `[]`.

        Returns:
          `(total, terms)`: the scalar total and a flat dict with, for every term
          `name`, the keys `name` (raw value), `name/weight` and `name/weighted`, and for a term
          with a `reference`, `name/reference` and `name/effective_weight` (0 where the
          reference is 0, i.e. where the term's data are absent from the batch).
        """
        weights = self.weights(step)
        total = jnp.zeros(())
        logged = {}
        for name, term in self.terms.items():
            missing = [
                key for key in (*term.inputs, term.example_weights) if key and key not in inputs
            ]
            if missing:
                raise KeyError(
                    f"term {name!r} needs input(s) {missing}, but the loss was called with "
                    f"{sorted(inputs)}."
                )
            example_weights = inputs[term.example_weights] if term.example_weights else None
            arrays = {key: inputs[key] for key in term.inputs}
            raw = _reduce(name, _call(name, term.fn, arrays), example_weights)
            weighted = weights[name] * raw
            total = total + weighted
            logged[name] = raw
            logged[f"{name}/weight"] = weights[name]
            logged[f"{name}/weighted"] = weighted
            if term.reference is not None:
                reference = _reduce(name, _call(name, term.reference, arrays), example_weights)
                logged[f"{name}/reference"] = reference
                safe = jnp.where(reference != 0, reference, 1.0)
                logged[f"{name}/effective_weight"] = jnp.where(reference != 0, weighted / safe, 0.0)
        return total, logged


def compose(**terms: Term) -> CompositeLoss:
    """Builds a `CompositeLoss` from named terms, checking them before any tracing.

    Args:
      **terms: `name=Term(...)`; names become the logged keys.

    Returns:
      The composite loss.
    """
    if not terms:
        raise ValueError("compose: give at least one term, e.g. compose(mae=Term(absolute_error)).")
    for name, term in terms.items():
        if not isinstance(term, Term):
            raise TypeError(f"compose: term {name!r} must be a jaxguard.losses.Term, got {term!r}.")
        if not callable(term.fn):
            raise TypeError(f"compose: term {name!r} has a `fn` that is not callable: {term.fn!r}.")
        if term.reference is not None and not callable(term.reference):
            raise TypeError(
                f"compose: term {name!r} has a `reference` that is not callable: "
                f"{term.reference!r}."
            )
        if isinstance(term.inputs, str) or not term.inputs:
            raise TypeError(
                f"compose: term {name!r} needs `inputs` as a non-empty tuple of names, "
                f"got {term.inputs!r}."
            )
        first_weight = term.weight(0) if callable(term.weight) else term.weight
        if np.ndim(first_weight) != 0 or not np.isfinite(first_weight) or first_weight < 0:
            raise ValueError(
                f"compose: term {name!r} has weight {first_weight!r} at step 0; weights must be "
                "finite scalars >= 0."
            )
    return CompositeLoss(dict(terms))
