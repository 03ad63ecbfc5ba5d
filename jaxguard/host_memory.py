"""Host memory settings that keep XLA:CPU from page-faulting large arrays in at every call.

XLA:CPU takes every output and temporary buffer from the C library's `malloc`, on the
thread that runs the computation. glibc serves blocks above its mmap threshold (at most
32 MB) with a fresh `mmap` and unmaps them on `free`, so an array of that size is new
memory at every call: the kernel zero-fills each 4 KB page on the first write, which
makes writing a fresh array several times slower than the memory allows. A thread
other than the main one has its own glibc arena, which cannot keep any block above
64 MB, and with JAX's default asynchronous CPU dispatch computations run on such
threads.

`tune_host_allocator()` therefore

* asks glibc (`mallopt`) to serve blocks up to 1 GiB from the heap (`M_MMAP_THRESHOLD`)
  and never to shrink it (`M_TRIM_THRESHOLD`), so a freed block is reused by the next
  call instead of being returned to the kernel;
* runs CPU computations on the calling thread (`jax_cpu_enable_async_dispatch=False`),
  so their buffers come from that thread's heap, which keeps blocks of any size up to
  the threshold. JAX reads this when it creates the CPU backend: call the function
  before the first JAX computation (it warns when that has happened already). It only
  changes CPU computations; GPU and TPU dispatch stays asynchronous.

Measured on a 2-core machine (2026-11, medians; `value_and_grad` of
`variance_preserving_mse`; train steps from `benchmarks.train_step`):

| | glibc, async dispatch | glibc thresholds only | tuned (both) |
|---|---|---|---|
| 1e3 elements | 20 us | 22 us | 20 us |
| 1e7 elements (40 MB gradient) | 24 ms | 9.6-12 ms | 8.8-9.9 ms |
| 5e7 elements (200 MB gradient) | 93 ms | 98 ms | 38 ms |
| cvae train step | 24-27 ms | 26-27 ms | 22-23 ms |
| pointer train step | 45-52 ms | 30-38 ms | 25-27 ms |

(`M_ARENA_MAX = 1`, one heap shared by all threads, also lets worker threads reuse
large blocks, but their shared lock made the cVAE step 15% slower; it is not used.)

`python -m jaxguard.train` and the benchmarks call it at start-up unless the
environment variable `JAXGUARD_HOST_ALLOCATOR=default` says not to; a library user
calls it once at the top of their program. The cost: the process keeps the memory of
its largest step (its resident size does not fall when a large temporary is freed),
which is what a training loop needs anyway, and Python no longer runs ahead of CPU
computations (it waits for each call, as `block_until_ready` would). Nothing changes
where the C library is not glibc (macOS, musl): the function then returns False.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import jax

try:  # No public equivalent; only used to warn about a call that comes too late.
    from jax._src.xla_bridge import backends_are_initialized as _backends_are_initialized
except ImportError:  # pragma: no cover - a JAX that moved it: skip the warning
    _backends_are_initialized = lambda: False  # noqa: E731

from jaxguard.config import ConfigError

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap once tuned; larger ones are still mmap-ed.
MMAP_THRESHOLD_BYTES = 1 << 30
_NEVER_TRIM = 2**31 - 1
#: Environment variable read by `tune_host_allocator_from_env`: one of `_CHOICES`.
ENV_VAR = "JAXGUARD_HOST_ALLOCATOR"
_CHOICES = ("tuned", "default")


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has `mallopt` and a glibc version)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune_host_allocator() -> bool:
    """Applies the settings above; True when glibc accepted them.

    Returns False (and changes nothing) where the C library is not glibc. Calling it
    again is harmless.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    accepted = all([libc.mallopt(parameter, value) == 1 for parameter, value in settings])
    if _backends_are_initialized():
        warnings.warn(
            "jaxguard.host_memory.tune_host_allocator() was called after the first JAX "
            "computation: CPU dispatch stays asynchronous, so buffers above 64 MB are still "
            "mapped afresh at every call; call it at the top of the program",
            stacklevel=2,
        )
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return accepted


def tune_host_allocator_from_env() -> bool:
    """`tune_host_allocator()` unless `JAXGUARD_HOST_ALLOCATOR=default`; True when tuned.

    Raises:
      ConfigError: the variable holds something other than `tuned` or `default`.
    """
    choice = os.environ.get(ENV_VAR, "tuned").strip().lower()
    if choice not in _CHOICES:
        raise ConfigError(
            f"environment variable {ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {_CHOICES}"
        )
    return choice == "tuned" and tune_host_allocator()
