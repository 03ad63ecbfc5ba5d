"""The host memory settings: XLA's large outputs come from glibc's heap once tuned.

Each check runs in a fresh interpreter (the settings must precede the first JAX
computation, and the test process keeps glibc's and JAX's defaults). `mallinfo2()`
(glibc >= 2.33) reports the bytes glibc holds in mmap-ed blocks (`hblkhd`).
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxguard import host_memory
from jaxguard.config import ConfigError

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the settings are glibc's"
)

# Tunes as argv[1] says, then reports how many more bytes glibc holds in mmap-ed blocks
# while three 100 MB outputs of a jitted computation are alive, and whether dispatch is
# async. (By default most such outputs are mapped afresh; now and then one is not.)
_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    from jaxguard import host_memory

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    tuned = {"tune": host_memory.tune_host_allocator,
             "env": host_memory.tune_host_allocator_from_env,
             "none": lambda: False}[sys.argv[1]]()
    import jax, jax.numpy as jnp
    x = jnp.zeros(25 << 20, jnp.float32)  # 100 MB
    negate = jax.jit(jnp.negative)
    negate(x).block_until_ready()  # compiled; its output freed
    before = libc.mallinfo2().hblkhd
    outputs = [negate(x).block_until_ready() for _ in range(3)]
    mapped = libc.mallinfo2().hblkhd - before
    asynchronous = jax.config.read("jax_cpu_enable_async_dispatch")
    print(json.dumps({"tuned": tuned, "mapped": mapped, "async": asynchronous}))
    """
)


def _probe(mode: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        check=True,
    )
    return json.loads(result.stdout)


def test_by_default_a_large_output_is_mapped_afresh():
    # The baseline the settings change.
    probe = _probe("none")
    assert probe["async"] and probe["mapped"] >= 100 << 20


def test_tuned_outputs_reuse_the_heap():
    assert _probe("tune") == {"tuned": True, "mapped": 0, "async": False}


def test_env_tunes_unless_told_not_to():
    assert _probe("env", **{host_memory.ENV_VAR: "tuned"})["mapped"] == 0
    untouched = _probe("env", **{host_memory.ENV_VAR: "default"})
    assert not untouched["tuned"] and untouched["async"] and untouched["mapped"] >= 100 << 20


def test_env_rejects_an_unknown_choice(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_VAR, "fast")
    with pytest.raises(ConfigError, match="JAXGUARD_HOST_ALLOCATOR='fast'.*tuned"):
        host_memory.tune_host_allocator_from_env()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.tune_host_allocator() is False


def test_tuning_after_the_first_computation_warns():
    code = (
        "import jax.numpy as jnp; jnp.ones(3).block_until_ready();"
        "from jaxguard import host_memory; host_memory.tune_host_allocator()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        check=True,
    )
    assert "called after the first JAX computation" in result.stderr
