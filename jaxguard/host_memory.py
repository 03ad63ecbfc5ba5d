"""Host allocator settings that keep XLA:CPU from page-faulting large arrays in at every call.

XLA:CPU takes every output and temporary buffer from the C library's `malloc`. glibc
serves blocks above its mmap threshold (at most 32 MB, and always above 64 MB in a
thread's own arena) with a fresh `mmap` and unmaps them on `free`, so an array of
that size is new memory at every call: the kernel zero-fills each 4 KB page on the
first write, which makes writing a fresh array several times slower than the memory
allows. On a 2-core machine (2026-11), `jax.jit(jnp.negative)` of 5e7 float32 took
79 ms as is and 17 ms after `tune_host_allocator()`; `value_and_grad` of the
variance-preserving MSE at 1e7 elements took 28 ms and 12 ms.

`tune_host_allocator()` asks glibc (`mallopt`) to

* serve blocks up to 1 GiB from the heap (`M_MMAP_THRESHOLD`), so freed blocks are
  reused by the next call instead of being returned to the kernel;
* never shrink the heap (`M_TRIM_THRESHOLD`);
* use one heap for all threads (`M_ARENA_MAX = 1`), because a thread's own arena
  cannot hold a block above 64 MB. This part only affects threads that have not
  allocated yet: call the function before the first JAX computation.

The cost: the process keeps the memory of its largest step (its resident size does
not fall when a large temporary is freed), which is what a training loop needs
anyway. It changes nothing on devices' own memory (GPU, TPU) and is a no-op where the
C library is not glibc (macOS, musl).

`python -m jaxguard.train` and the benchmarks call it at start-up unless the
environment variable `JAXGUARD_HOST_ALLOCATOR=default` says not to; a library user
calls it once at the top of their own program.
"""

from __future__ import annotations

import ctypes
import os

from jaxguard.config import ConfigError

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks up to this size come from the heap once tuned; larger ones are still mmap-ed.
MMAP_THRESHOLD_BYTES = 1 << 30
_NEVER_TRIM = 2**31 - 1
#: Environment variable read by `tune_host_allocator_from_env`: `tuned` or `default`.
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
    """Applies the glibc settings above; True when glibc accepted all of them.

    Returns False (and changes nothing) where the C library is not glibc. Calling it
    again is harmless.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        (_M_ARENA_MAX, 1),
    )
    return all([libc.mallopt(parameter, value) == 1 for parameter, value in settings])


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
