"""One-pass, vectorised, accurately rounded sums of several arrays, for the batch losses.

`lax.reduce` over several operands is one fused loop: `variance_penalty` and
`extreme_weighted_mae` read their inputs once for all their statistics, where one
`jnp.sum` per statistic reads them once each (the plain versions made five passes and
built full-size temporaries for the masks and differences).

XLA:CPU emits a reduction with several outputs as a scalar loop unless fast math lets
it reorder float additions (about 1 ns per element and thread, several times slower
than the memory). So the operands are cut into blocks of `_DEPTH x _LANES` elements and
reduced over the `_DEPTH` axis only: each of the `_LANES` outputs of a block is its own
chain of `_DEPTH` additions, LLVM unrolls the chain and runs the lanes side by side in
vector registers, without reordering any addition. The lane sums (1/16 of the input)
are then added by `jnp.sum`, whose tree reduction keeps the float32 rounding at a few
units in the last place: the sums agree with float64 to about 1e-7 relative at 5e7
elements, where one sequential float32 sum of 5e7 squares was 20% off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

# Additions one after the other per lane: 16 is the longest chain LLVM unrolls fully
# (32 ran 3x slower: the loop stays rolled and the lanes scalar).
_DEPTH = 16
# Lanes summed side by side (one 512-bit register of float32).
_LANES = 16
#: Elements of one block; an axis's last `n % BLOCK` elements are summed by a scalar loop.
BLOCK = _DEPTH * _LANES
# Below this many elements per row one scalar loop is cheaper than a second kernel call.
_SCALAR_BELOW = 4 * BLOCK
# Elements per fused reduction at most: its lane sums (1/16 of its input per operand)
# then stay below glibc's 32 MB mmap threshold, so they reuse memory instead of taking
# fresh pages (and page faults) at every call.
_CHUNK = 2**22


def _fused_sum(operands: tuple[jax.Array, ...], axis: int) -> tuple[jax.Array, ...]:
    """Sums over `axis` of same-shape arrays, in a single reduction (one loop)."""
    zeros = tuple(jnp.zeros((), x.dtype) for x in operands)
    add = lambda xs, ys: tuple(x + y for x, y in zip(xs, ys, strict=True))
    return tuple(lax.reduce(operands, zeros, add, (operands[0].ndim + axis,)))


def _block_sums(operands: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Sums over the last axis, a multiple of `BLOCK` long: vectorised lanes, then a tree."""
    lead = operands[0].shape[:-1]
    blocks = tuple(x.reshape(*lead, -1, _DEPTH, _LANES) for x in operands)
    return tuple(jnp.sum(lanes, axis=(-2, -1)) for lanes in _fused_sum(blocks, axis=-2))


def sums_over_last_axis(
    terms: Callable[..., tuple[jax.Array, ...]], *inputs: jax.Array
) -> tuple[jax.Array, ...]:
    """`tuple(jnp.sum(x, axis=-1) for x in terms(*inputs))`, reading `inputs` in one pass.

    `terms` is applied to slices of the inputs and fused into the reductions, so nothing
    of the inputs' size is written (`lambda p, t: (p - t, jnp.where(t > 1, p, 0))`).

    Args:
      terms: an elementwise function of the inputs returning the arrays to sum, each of
        the inputs' shape; a sum keeps its array's dtype (an int32 count stays exact).
      *inputs: arrays of one shape `[..., n]`.

    Returns:
      One `[...]` array per array `terms` returns.
    """
    n = inputs[0].shape[-1]
    full = n - n % BLOCK if n >= _SCALAR_BELOW else 0
    rows = math.prod(inputs[0].shape[:-1])
    chunk = min(full, max(BLOCK, _CHUNK // max(rows, 1) // BLOCK * BLOCK))
    totals = None
    if full:
        chunks, rest = divmod(full, chunk)
        totals = _block_sums(terms(*(x[..., :chunk] for x in inputs)))
        if chunks > 1:
            # A loop, not one reduction per chunk: XLA keeps the lane sums of every
            # unrolled chunk alive at once (50 MB at 5e7 elements), a loop reuses one chunk's.
            def add_chunk(index, partial):
                pieces = (lax.dynamic_slice_in_dim(x, index * chunk, chunk, -1) for x in inputs)
                return _add(partial, _block_sums(terms(*pieces)))

            totals = lax.fori_loop(1, chunks, add_chunk, totals)
        if rest:
            start = chunks * chunk
            totals = _add(totals, _block_sums(terms(*(x[..., start:full] for x in inputs))))
    if full < n or not full:
        tail = _fused_sum(terms(*(x[..., full:] for x in inputs)), axis=-1)
        totals = tail if totals is None else _add(totals, tail)
    return totals


def _add(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))
