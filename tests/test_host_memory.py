"""The host allocator settings: glibc really serves large blocks from its heap afterwards.

Each check runs in a fresh interpreter, so the test process keeps glibc's defaults.
`mallinfo2()` (glibc >= 2.33) reports the bytes held in mmap-ed blocks (`hblkhd`).
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

# Allocates a block of argv[2] MB in the main thread and in a new thread, and reports for each
# how many more bytes glibc holds in mmap-ed blocks while the block is alive.
_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys, threading
    from jaxguard import host_memory

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    tuned = {"tune": host_memory.tune_host_allocator,
             "single": lambda: host_memory.tune_host_allocator(single_arena=True),
             "env": host_memory.tune_host_allocator_from_env,
             "none": lambda: False}[sys.argv[1]]()
    mapped = {}

    def probe(where):
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(int(sys.argv[2]) << 20)
        mapped[where] = libc.mallinfo2().hblkhd - before
        libc.free(block)

    probe("main")
    thread = threading.Thread(target=probe, args=("thread",))
    thread.start()
    thread.join()
    print(json.dumps({"tuned": tuned, **mapped}))
    """
)


def _probe(mode: str, megabytes: int, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(megabytes)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return json.loads(result.stdout)


def test_glibc_defaults_map_large_blocks():
    # The baseline the settings change: a 48 MB block is its own mmap in every thread.
    mapped = _probe("none", 48)
    assert not mapped["tuned"]
    assert mapped["main"] >= 48 << 20 and mapped["thread"] >= 48 << 20


def test_tuned_blocks_come_from_the_heap():
    # Up to 64 MB a thread's own arena holds the block too; above, only the main heap.
    assert _probe("tune", 48) == {"tuned": True, "main": 0, "thread": 0}
    large = _probe("tune", 100)
    assert large["main"] == 0 and large["thread"] >= 100 << 20


def test_single_arena_serves_large_blocks_in_every_thread():
    assert _probe("single", 100) == {"tuned": True, "main": 0, "thread": 0}


def test_env_chooses_the_setting():
    assert _probe("env", 48, **{host_memory.ENV_VAR: "tuned"})["tuned"] == "tuned"
    assert _probe("env", 100, **{host_memory.ENV_VAR: "single-arena"}) == {
        "tuned": "single-arena", "main": 0, "thread": 0
    }  # fmt: skip
    untouched = _probe("env", 48, **{host_memory.ENV_VAR: "default"})
    assert untouched["tuned"] == "default" and untouched["main"] >= 48 << 20


def test_env_rejects_an_unknown_choice(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_VAR, "fast")
    with pytest.raises(ConfigError, match="JAXGUARD_HOST_ALLOCATOR='fast'.*single-arena"):
        host_memory.tune_host_allocator_from_env()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.tune_host_allocator() is False
    monkeypatch.setenv(host_memory.ENV_VAR, "tuned")
    assert host_memory.tune_host_allocator_from_env() == "default"
