import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.losses import _sums
from jaxguard.losses._sums import BLOCK, sums_over_last_axis

_sums_jit = jax.jit(sums_over_last_axis, static_argnums=0)


@pytest.mark.parametrize(
    "shape",
    [
        (0,),
        (1,),
        (BLOCK + 3,),  # short rows: one scalar loop
        (4 * BLOCK,),  # whole blocks only
        (9 * BLOCK + 5,),  # blocks and a ragged tail
        (3, 5 * BLOCK + 1),  # per-row sums
        (2, 3, 7),
    ],
)
def test_sums_match_float64_for_every_layout(rng, shape):
    values = rng.normal(3.0, 2.0, size=shape).astype(np.float32)
    counts = (values > 3.0).astype(np.int32)
    got_values, got_squares, got_counts = _sums_jit(lambda v, c: (v, v**2, c), values, counts)
    expected = np.asarray(values, np.float64)
    np.testing.assert_allclose(got_values, expected.sum(axis=-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_squares, (expected**2).sum(axis=-1), rtol=1e-6)
    assert got_counts.dtype == jnp.int32
    np.testing.assert_array_equal(got_counts, counts.sum(axis=-1))


def test_sums_split_long_rows_into_chunks(rng):
    """Rows longer than a chunk are summed chunk by chunk; the totals are unchanged."""
    values = rng.normal(size=(4, _sums._CHUNK // 4 + 3 * BLOCK + 44)).astype(np.float32)
    (got,) = _sums_jit(lambda v: (v,), values)
    np.testing.assert_allclose(got, np.asarray(values, np.float64).sum(axis=-1), atol=1e-2)


def test_sums_stay_accurate_where_a_sequential_float32_sum_drifts(rng):
    """2**22 squares of values near 1e2: a running float32 sum drifts, blocks agree to 1e-6."""
    values = rng.normal(100.0, 1.0, size=2**22 + 3 * BLOCK + 7).astype(np.float32)
    (got,) = _sums_jit(lambda v: (v**2,), values)
    expected = np.sum(np.asarray(values, np.float64) ** 2)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    running = np.cumsum(values**2, dtype=np.float32)[-1]  # the sequential sum, for contrast
    assert abs(float(running) - expected) / expected > 1e-5
