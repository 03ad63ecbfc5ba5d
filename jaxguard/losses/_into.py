"""A loss's value and gradient with the gradient written into a buffer the caller reuses.

`jax.jit(jax.value_and_grad(loss))(pred, target)` returns a fresh gradient array at every
call. On a CPU with glibc's default allocator, an array above its mmap threshold (at most
32 MB: a `[64, 512, 512]` float32 field is 67 MB) is new memory at every call, and the kernel
zero-fills each of its pages on the first write: at `[64, 512, 512]` that doubled the time of
`extreme_weighted_mae`'s value and gradient (32 ms against 16 ms into a reused buffer;
`python -m benchmarks.losses`, `glibc` setting). `jaxguard.host_memory.tune_host_allocator()`
fixes it for the whole process; `value_and_grad_into` fixes it for one call site, with no
process-wide setting: the gradient goes into a buffer the caller passes back (`out=`, as in
NumPy), which XLA overwrites in place (buffer donation). Inside a jitted train step none of
this is needed: there the gradient never leaves the step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def value_and_grad_into(
    loss: Callable[..., jax.Array],
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """`(value, d loss / d pred)` of `loss(pred, *rest)`, the gradient written into `out`.

        step = value_and_grad_into(functools.partial(extreme_weighted_mae, threshold=10.0,
                                                     lambda_base=1.0, lambda_ext=5.0))
        grad = jnp.zeros_like(pred)
        for pred, target in batches:
            value, grad = step(pred, target, out=grad)

    `out` is donated: after the call it is deleted, and the returned gradient lives in its
    memory. Pass the previous call's gradient back, or any array you no longer need of
    `pred`'s shape and dtype. The first call for a shape compiles (as `jax.jit` does).

    Args:
      loss: a scalar loss of `pred` and further positional arrays, e.g. `target`.

    Returns:
      A function `(pred, *rest, out) -> (value [], gradient of pred's shape and dtype)`.

    Raises (from the returned function):
      ValueError: `out` has another shape or dtype than `pred` (named with both).
    """
    value_and_grad = jax.value_and_grad(loss)

    def into(out: jax.Array, pred: jax.Array, *rest: jax.Array) -> tuple[jax.Array, jax.Array]:
        value, grad = value_and_grad(pred, *rest)
        # Writing the gradient over the whole donated buffer lets XLA compute it in place.
        return value, lax.dynamic_update_slice(out, grad, (0,) * grad.ndim)

    compiled = jax.jit(into, donate_argnums=0)

    def call(pred: jax.Array, *rest: jax.Array, out: jax.Array) -> tuple[jax.Array, jax.Array]:
        if (jnp.shape(out), jnp.result_type(out)) != (
            jnp.shape(pred),
            jnp.result_type(pred),
        ):
            raise ValueError(
                f"value_and_grad_into: `out` is {jnp.result_type(out)}"
                f"{list(jnp.shape(out))} but `pred` is {jnp.result_type(pred)}"
                f"{list(jnp.shape(pred))}; the gradient buffer must match `pred`."
            )
        return compiled(out, pred, *rest)

    return call
