"""Benchmarks of jaxguard's loss kernels and train steps (see benchmarks/README.md).

This module holds what both benchmarks share: the description of the machine and
settings a result was measured under, round-robin timing, and writing the tables.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from jaxguard import host_memory

#: Where results are written; git-ignored.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Environment variables that change the timings and are recorded with every result.
SETTINGS_VARIABLES = (
    "XLA_FLAGS",
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "OMP_NUM_THREADS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "JAXGUARD_HOST_ALLOCATOR",
)


def load_average() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def tune_host_allocator() -> str:
    """Tunes as `python -m jaxguard.train` does, unless `JAXGUARD_HOST_ALLOCATOR=default`.

    Call before the first JAX computation. Returns the label the reports print.
    """
    if host_memory.tune_host_allocator_from_env():
        return "tuned (jaxguard.host_memory: heap reuse, synchronous CPU dispatch)"
    return "glibc defaults, asynchronous CPU dispatch"


def environment(host_allocator: str) -> dict:
    """The machine, library versions, threads and settings a measurement ran under."""
    device = jax.devices()[0]
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    info = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "x64": bool(jax.config.jax_enable_x64),
        "load_average": load_average(),
        "env": {name: os.environ.get(name) for name in SETTINGS_VARIABLES},
        "host_allocator": host_allocator,
    }
    return info


def environment_lines(info: Mapping) -> list[str]:
    """`environment()` as the lines printed above a table."""
    flags = {name: value for name, value in info["env"].items() if value}
    return [
        f"machine: {info['processor']}, {info['usable_cores']} usable of {info['cpu_count']} "
        f"cores; {info['platform']}",
        f"device: {info['backend']} ({info['device_kind']}) x{info['device_count']}; "
        f"jax {info['jax']}, jaxlib {info['jaxlib']}, numpy {info['numpy']}, "
        f"torch {info['torch'] or 'not installed'}",
        "settings: " + (", ".join(f"{k}={v}" for k, v in flags.items()) or "none (defaults)"),
        f"host allocator: {info['host_allocator']}",
        f"load average at start: {info['load_average']:.2f}",
    ]


def round_robin(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    budget_s: float = float("inf"),
    burst: int = 1,
) -> dict[str, list]:
    """Seconds per call of up to `repeats` turns of each callable, taken in turns.

    A turn is `burst` back-to-back calls and records their mean: for calls of a few
    microseconds, a lone call between other libraries' calls mostly times waking up
    XLA's thread pool, where a training loop calls back to back.

    Taking turns spreads a change in the machine's load (other jobs start or stop)
    over all the callables instead of charging it to whichever ran at that time. The
    order is shuffled every round: the call after a different library's (waking XLA's
    thread pool, or competing with PyTorch's OpenMP threads still spinning) runs slower,
    and a fixed order would charge that to the same callable every time. A callable
    stops being called once its calls add up to `budget_s` seconds (after three calls
    at least), so one slow alternative does not hold up the run. Each callable must
    block until its work is done.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            call = calls[name]
            if len(times[name]) >= 3 and sum(times[name]) * burst >= budget_s:
                continue
            start = time.perf_counter()
            for _ in range(burst):
                call()
            times[name].append((time.perf_counter() - start) / burst)
    return times


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: Mapping, markdown: str) -> tuple[Path, Path]:
    """Writes `RESULTS_DIR/<name>-<time>.json` and `.md`; returns both paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, markdown_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    markdown_path.write_text(markdown + "\n")
    return json_path, markdown_path
