"""Times jaxguard's variance-loss and weighted-loss kernels against the alternatives.

    python -m benchmarks.losses                  # full run, a few minutes on 2 cores
    python -m benchmarks.losses --quick          # 3 sizes, 2 field sizes, 5 repeats
    python -m benchmarks.losses --sizes 1e3,1e7 --fields 256 --repeats 20
    python -m benchmarks.losses --settings glibc,tuned,hugetlb,fast-math

Kernels, each forward and forward+gradient with respect to the predictions:

* variance: `mse + 0.5 * variance_penalty` (the seed's loss) on `[n]` vectors:
  `variance_preserving_mse` (one pass), and composed from jnp's MSE and
  `variance_penalty` (`jaxguard composed`);
* extreme: `extreme_weighted_mae(threshold=10, lambda_base=1, lambda_ext=5)` on
  `[64, H, H]` fields.

Implementations: `jaxguard` (the library's public functions), `jax-naive` (the
same formulas in plain jnp), `torch-eager` and `torch-compile` (when torch is
installed; CPU build), `numpy` (forward only). The same run measures the memory
bandwidth (a 256 MB read-only reduction and a copy) and reports, per size and
implementation, median times, effective GB/s (inputs read once, gradient written
once, over the median time), the percentage of the measured read bandwidth, and
jaxguard's speed-up over each alternative. JAX's forward+gradient is timed twice:
as a user calls it (a fresh gradient array each call) and writing the gradient
into a donated buffer (no page faults on a fresh allocation). Compilation is timed
apart. The accuracy of jaxguard's kernels against float64 NumPy is printed for
every size. Every setting (`SETTINGS`: the host allocator as glibc leaves it or as
`python -m jaxguard.train` tunes it, huge pages, fast math) runs in a process of
its own. Results go to benchmarks/results/ as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import benchmarks
from jaxguard import losses

VARIANCE_WEIGHT = 0.5
THRESHOLD, LAMBDA_BASE, LAMBDA_EXT = 10.0, 1.0, 5.0
FIELD_BATCH = 64
MIN_VARIANCE = 1e-12  # jaxguard's floor below which a target batch has no spread

DEFAULT_SIZES = (1e3, 1e4, 1e5, 1e6, 1e7, 5e7)
#: Sizes (elements) from which the speed targets apply: the issue's 1e7-element variance
#: vectors, and the extreme kernel's [64, 256, 256] and [64, 512, 512] fields.
TARGET_ELEMENTS = {"variance": 10**7, "extreme": 64 * 256 * 256}
SMALL_SIZE = 10**4  # up to here, a call is held to the dispatch floor of an empty jit
BUDGET_S = 4.0  # seconds of timed calls per implementation and size (3 calls at least)
DEFAULT_FIELDS = (64, 128, 256, 512)
QUICK_SIZES = (1e3, 1e5, 1e7)
QUICK_FIELDS = (64, 256)

# Process settings a run can be repeated under (each in a child process, as they act at
# start-up), each run in a child process. `glibc` is what a library user gets who does
# not call `jaxguard.host_memory.tune_host_allocator()`; `tuned` is what
# `python -m jaxguard.train` gets.
_GLIBC = {"JAXGUARD_HOST_ALLOCATOR": "default"}
_TUNED = {"JAXGUARD_HOST_ALLOCATOR": "tuned"}
SETTINGS = {
    "glibc": _GLIBC,
    "tuned": _TUNED,
    "hugetlb": {**_GLIBC, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "fast-math": {**_TUNED, "XLA_FLAGS": "--xla_cpu_enable_fast_math=true"},
}
DEFAULT_SETTINGS = ("glibc", "tuned")

# ----------------------------------------------------------------------------- the losses


def jaxguard_variance_loss(pred, target):
    return losses.variance_preserving_mse(pred, target, variance_weight=VARIANCE_WEIGHT)


def composed_variance_loss(pred, target):
    """The same loss as a user composes it from jnp's MSE and jaxguard's penalty."""
    return jnp.mean(jnp.square(pred - target)) + VARIANCE_WEIGHT * losses.variance_penalty(
        pred, target
    )


def naive_variance_loss(pred, target):
    """The seed's loss in plain jnp: two-pass variances, five reductions."""

    def variance(x):
        return jnp.mean((x - jnp.mean(x)) ** 2)

    target_var = variance(target)
    usable = target_var > MIN_VARIANCE
    ratio = variance(pred) / jnp.where(usable, target_var, 1.0)
    penalty = jnp.where(usable, (1.0 - ratio) ** 2, 0.0)
    return jnp.mean((pred - target) ** 2) + VARIANCE_WEIGHT * penalty


def jaxguard_extreme_loss(pred, target):
    return losses.extreme_weighted_mae(
        pred, target, threshold=THRESHOLD, lambda_base=LAMBDA_BASE, lambda_ext=LAMBDA_EXT
    )


def naive_extreme_loss(pred, target):
    """The seed-002 loss in plain jnp, per-sample masked means."""
    axes = tuple(range(1, pred.ndim))
    is_extreme = target > THRESHOLD
    counts = jnp.sum(is_extreme, axis=axes)
    error_sums = jnp.sum(jnp.where(is_extreme, jnp.abs(pred - target), 0.0), axis=axes)
    has_extreme = counts > 0
    per_sample = error_sums / jnp.maximum(counts, 1)
    extreme = jnp.sum(jnp.where(has_extreme, per_sample, 0.0)) / jnp.maximum(
        jnp.sum(has_extreme), 1
    )
    return LAMBDA_BASE * jnp.mean(jnp.abs(pred - target)) + LAMBDA_EXT * extreme


def numpy_variance_loss(pred, target):
    penalty = (1.0 - pred.var() / target.var()) ** 2 if target.var() > MIN_VARIANCE else 0.0
    return np.mean(np.square(pred - target)) + VARIANCE_WEIGHT * penalty


def numpy_extreme_loss(pred, target):
    batch = len(pred)
    error = np.abs(pred - target).reshape(batch, -1)
    is_extreme = target.reshape(batch, -1) > THRESHOLD
    counts = is_extreme.sum(axis=1)
    error_sums = np.where(is_extreme, error, 0.0).sum(axis=1)
    has_extreme = counts > 0
    per_sample = error_sums / np.maximum(counts, 1)
    extreme = np.where(has_extreme, per_sample, 0.0).sum() / max(has_extreme.sum(), 1)
    return LAMBDA_BASE * error.mean() + LAMBDA_EXT * extreme


def torch_losses():
    """The two losses written idiomatically in PyTorch, or None without torch."""
    try:
        import torch
    except ImportError:
        return None

    def variance_loss(pred, target):
        target_var = torch.var(target, correction=0)
        usable = target_var > MIN_VARIANCE
        ratio = torch.var(pred, correction=0) / torch.where(
            usable, target_var, torch.ones_like(target_var)
        )
        penalty = torch.where(usable, (1.0 - ratio) ** 2, torch.zeros_like(ratio))
        return torch.mean((pred - target) ** 2) + VARIANCE_WEIGHT * penalty

    def extreme_loss(pred, target):
        batch = pred.shape[0]
        error = (pred - target).abs().reshape(batch, -1)
        is_extreme = target.reshape(batch, -1) > THRESHOLD
        counts = is_extreme.sum(dim=1)
        error_sums = torch.where(is_extreme, error, torch.zeros_like(error)).sum(dim=1)
        has_extreme = counts > 0
        per_sample = error_sums / counts.clamp(min=1)
        extreme = torch.where(has_extreme, per_sample, torch.zeros_like(per_sample)).sum()
        extreme = extreme / has_extreme.sum().clamp(min=1)
        return LAMBDA_BASE * error.mean() + LAMBDA_EXT * extreme

    return torch, {"variance": variance_loss, "extreme": extreme_loss}


# ----------------------------------------------------------------------------- data and references


def variance_data(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Optical-depth-like targets (gamma) and predictions that under-spread them."""
    rng = np.random.default_rng(seed)
    target = (rng.gamma(2.0, 0.45, size) + 0.15).astype(np.float32)
    pred = (0.6 * target + rng.normal(0.0, 0.1, size)).astype(np.float32)
    return pred, target


def offset_data(size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A mean 1e5 times the spread: where E[x^2] - E[x]^2 and sequential sums fail."""
    rng = np.random.default_rng(seed)
    target = rng.normal(1e4, 0.1, size).astype(np.float32)
    pred = rng.normal(1e4, 0.08, size).astype(np.float32)
    return pred, target


def extreme_data(height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rain-like fields with rare extremes above 10; every fourth sample has none."""
    rng = np.random.default_rng(seed)
    target = rng.gamma(0.6, 2.0, (FIELD_BATCH, height, height)).astype(np.float32)
    target[::4] = np.minimum(target[::4], THRESHOLD - 1.0)
    pred = (target + rng.normal(0.0, 1.0, target.shape)).astype(np.float32)
    return pred, target


def variance_penalty_reference(pred, target) -> tuple[float, np.ndarray]:
    """Float64 value and gradient (w.r.t. pred) of `variance_penalty`."""
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    ratio = pred.var() / target.var()
    grad = -4.0 * (1.0 - ratio) / (target.var() * pred.size) * (pred - pred.mean())
    return (1.0 - ratio) ** 2, grad


def variance_loss_reference(pred, target) -> tuple[float, np.ndarray]:
    """Float64 value and gradient (w.r.t. pred) of `mse + VARIANCE_WEIGHT * variance_penalty`."""
    penalty, penalty_grad = variance_penalty_reference(pred, target)
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    mse_grad = 2.0 * (pred - target) / pred.size
    return np.mean((pred - target) ** 2) + VARIANCE_WEIGHT * penalty, (
        mse_grad + VARIANCE_WEIGHT * penalty_grad
    )


def extreme_reference(pred, target) -> tuple[float, np.ndarray]:
    """Float64 value and gradient (w.r.t. pred) of the extreme kernel."""
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    batch = len(pred)
    error = (pred - target).reshape(batch, -1)
    is_extreme = target.reshape(batch, -1) > THRESHOLD
    counts = is_extreme.sum(axis=1)
    has_extreme = counts > 0
    weights = np.where(has_extreme, 1.0 / (np.maximum(counts, 1) * max(has_extreme.sum(), 1)), 0.0)
    extreme = np.sum(weights * np.where(is_extreme, np.abs(error), 0.0).sum(axis=1))
    value = LAMBDA_BASE * np.abs(error).mean() + LAMBDA_EXT * extreme
    pixel = LAMBDA_BASE / error.size + LAMBDA_EXT * np.where(is_extreme, weights[:, None], 0.0)
    grad = np.where(error >= 0, 1.0, -1.0) * pixel
    return value, grad.reshape(pred.shape)


def relative_errors(fn, reference, pred, target) -> dict[str, float]:
    """Relative error of a kernel's value and of its gradient (max abs / max abs)."""
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(pred), jnp.asarray(target))
    ref_value, ref_grad = reference(pred, target)
    grad = np.asarray(grad, np.float64)
    return {
        "value": abs(float(value) - ref_value) / abs(ref_value),
        "grad": float(np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad))),
    }


# ----------------------------------------------------------------------------- implementations


@dataclasses.dataclass
class Impl:
    """An implementation bound to its inputs; each callable blocks until done.

    `compiles`: the modes whose first call compiles (JAX, torch.compile); their
    compilation time is the first call's time less the median of the timed calls.
    """

    name: str
    calls: dict[str, Callable[[], object]]
    compiles: bool = False


def jax_impl(name: str, loss, pred: jax.Array, target: jax.Array) -> Impl:
    """`fwd`, `fwd+grad` (a fresh gradient array, as users call it) and `fwd+grad donated`
    (`jaxguard.losses.value_and_grad_into`: the gradient written into the previous one's buffer).
    """
    fwd = jax.jit(loss)
    fwd_grad = jax.jit(jax.value_and_grad(loss))
    into = losses.value_and_grad_into(loss)
    buffer = [jnp.zeros_like(pred)]

    def run_donated():
        _, buffer[0] = into(pred, target, out=buffer[0])
        jax.block_until_ready(buffer[0])

    return Impl(
        name,
        {
            "fwd": lambda: jax.block_until_ready(fwd(pred, target)),
            "fwd+grad": lambda: jax.block_until_ready(fwd_grad(pred, target)),
            "fwd+grad donated": run_donated,
        },
        compiles=True,
    )


def torch_impl(name: str, torch, loss, pred: np.ndarray, target: np.ndarray, device: str):
    """`fwd` (no autograd) and `fwd+grad` (`torch.autograd.grad` w.r.t. pred)."""
    compiled = name == "torch-compile"
    run_loss = torch.compile(loss) if compiled else loss
    pred_t = torch.from_numpy(pred).to(device)
    target_t = torch.from_numpy(target).to(device)
    pred_grad = pred_t.detach().clone().requires_grad_(True)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            run_loss(pred_t, target_t)
        synchronize()

    def fwd_grad():
        value = run_loss(pred_grad, target_t)
        torch.autograd.grad(value, pred_grad)
        synchronize()

    return Impl(name, {"fwd": fwd, "fwd+grad": fwd_grad}, compiles=compiled)


def numpy_impl(loss, pred: np.ndarray, target: np.ndarray) -> Impl:
    return Impl("numpy", {"fwd": lambda: loss(pred, target)}, {})


def torch_device(torch) -> str | None:
    """The torch device matching JAX's backend, or None (those rows are skipped)."""
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


# ----------------------------------------------------------------------------- measurement


def measure_bandwidth(repeats: int, megabytes: int = 256) -> dict[str, float]:
    """GB/s of a read-only reduction, a copy into a reused buffer and one into a fresh array."""
    size = megabytes * 2**20 // 4
    source = jnp.asarray(np.random.default_rng(0).random(size, dtype=np.float32))
    read = jax.jit(jnp.sum)
    copy_into = jax.jit(
        lambda src, dst: lax.dynamic_update_slice(dst, -src, (0,)), donate_argnums=1
    )
    copy_fresh = jax.jit(jnp.negative)
    buffer = [jnp.zeros_like(source)]

    def run_copy_into():
        buffer[0] = copy_into(source, buffer[0])
        buffer[0].block_until_ready()

    calls = {
        "read": lambda: read(source).block_until_ready(),
        "copy": run_copy_into,
        "copy_fresh": lambda: copy_fresh(source).block_until_ready(),
    }
    for call in calls.values():
        call()
    times = benchmarks.round_robin(calls, repeats)
    nbytes = source.nbytes
    moved = {"read": nbytes, "copy": 2 * nbytes, "copy_fresh": 2 * nbytes}
    return {name: float(moved[name] / np.median(t) / 1e9) for name, t in times.items()}


def _repeats_for(elements: int, repeats: int) -> int:
    """More turns at small sizes, where each is cheap and timings scatter more."""
    return repeats * int(min(20, max(1, 1e6 // elements)))


def _burst_for(elements: int) -> int:
    """Back-to-back calls per turn: 100 at 1e3 elements, down to 1 from 1e5 (see round_robin)."""
    return int(max(1, 1e5 // elements))


def run_group(kernel: str, label: str, impls: list[Impl], elements: int, repeats: int) -> dict:
    """Times every call of every implementation in turns; one result row per implementation."""
    calls = {(impl.name, mode): call for impl in impls for mode, call in impl.calls.items()}
    first_call = {}
    for key, call in calls.items():
        start = time.perf_counter()
        call()  # compiles (JAX, torch.compile) and warms caches and allocations
        first_call[key] = time.perf_counter() - start
    load_start = benchmarks.load_average()
    times = benchmarks.round_robin(
        calls, _repeats_for(elements, repeats), budget_s=BUDGET_S, burst=_burst_for(elements)
    )
    load_end = benchmarks.load_average()
    itemsize = 4
    moved = {"fwd": 2 * elements * itemsize, "fwd+grad": 3 * elements * itemsize}
    moved["fwd+grad donated"] = moved["fwd+grad"]
    rows = []
    for impl in impls:
        medians = {mode: float(np.median(times[impl.name, mode])) for mode in impl.calls}
        rows.append(
            {
                "kernel": kernel,
                "size": label,
                "elements": elements,
                "impl": impl.name,
                "median_s": medians,
                "min_s": {mode: float(np.min(times[impl.name, mode])) for mode in impl.calls},
                "turns": {mode: len(times[impl.name, mode]) for mode in impl.calls},
                "burst": _burst_for(elements),
                "gb_per_s": {mode: moved[mode] / t / 1e9 for mode, t in medians.items()},
                "compile_s": {
                    mode: first_call[impl.name, mode] - medians[mode] for mode in impl.calls
                }
                if impl.compiles
                else {},
                "load": [load_start, load_end],
            }
        )
    return {"rows": rows}


def hlo_bytes(loss, pred: jax.Array, target: jax.Array) -> dict[str, float | None]:
    """Bytes XLA's cost analysis counts as accessed by one compiled `fwd` and `fwd+grad` call
    (every fusion's operands read and outputs written: main-memory traffic when nothing stays
    in cache), to set beside the floor (`moved` in `run_group`); None where the backend gives
    no analysis."""
    out = {}
    for mode, fn in (("fwd", loss), ("fwd+grad", jax.value_and_grad(loss))):
        analysis = jax.jit(fn).lower(pred, target).compile().cost_analysis()
        if isinstance(analysis, list):  # Older JAX: one dict per computation.
            analysis = analysis[0] if analysis else None
        out[mode] = None if not analysis else analysis.get("bytes accessed")
    return out


def benchmark_variance(size: int, repeats: int, torch_parts, empty_call) -> dict:
    pred_np, target_np = variance_data(size)
    pred, target = jnp.asarray(pred_np), jnp.asarray(target_np)
    impls = [
        jax_impl("jaxguard", jaxguard_variance_loss, pred, target),
        jax_impl("jaxguard composed", composed_variance_loss, pred, target),
        jax_impl("jax-naive", naive_variance_loss, pred, target),
    ]
    impls += _torch_impls(torch_parts, "variance", pred_np, target_np)
    impls.append(numpy_impl(numpy_variance_loss, pred_np, target_np))
    impls.append(Impl("empty jit", {"fwd": lambda: empty_call(pred, target)}, {}))
    result = run_group("variance", f"{size:.0e}", impls, size, repeats)
    result["hlo_bytes"] = hlo_bytes(jaxguard_variance_loss, pred, target)
    offset = offset_data(size)
    result["accuracy"] = {
        "loss, gamma": relative_errors(
            jaxguard_variance_loss, variance_loss_reference, pred_np, target_np
        ),
        "penalty, gamma": relative_errors(
            losses.variance_penalty, variance_penalty_reference, pred_np, target_np
        ),
        "loss, offset 1e4 +- 0.1": relative_errors(
            jaxguard_variance_loss, variance_loss_reference, *offset
        ),
        "penalty, offset 1e4 +- 0.1": relative_errors(
            losses.variance_penalty, variance_penalty_reference, *offset
        ),
    }
    return result


def benchmark_extreme(height: int, repeats: int, torch_parts, empty_call) -> dict:
    pred_np, target_np = extreme_data(height)
    pred, target = jnp.asarray(pred_np), jnp.asarray(target_np)
    impls = [
        jax_impl("jaxguard", jaxguard_extreme_loss, pred, target),
        jax_impl("jax-naive", naive_extreme_loss, pred, target),
    ]
    impls += _torch_impls(torch_parts, "extreme", pred_np, target_np)
    impls.append(numpy_impl(numpy_extreme_loss, pred_np, target_np))
    impls.append(Impl("empty jit", {"fwd": lambda: empty_call(pred, target)}, {}))
    label = f"{FIELD_BATCH}x{height}x{height}"
    result = run_group("extreme", label, impls, pred_np.size, repeats)
    result["hlo_bytes"] = hlo_bytes(jaxguard_extreme_loss, pred, target)
    result["accuracy"] = {
        "rain": relative_errors(jaxguard_extreme_loss, extreme_reference, pred_np, target_np)
    }
    return result


def _torch_impls(torch_parts, kernel: str, pred: np.ndarray, target: np.ndarray) -> list[Impl]:
    if torch_parts is None:
        return []
    torch, torch_fns = torch_parts
    device = torch_device(torch)
    if device is None:
        return []
    return [
        torch_impl(name, torch, torch_fns[kernel], pred, target, device)
        for name in ("torch-eager", "torch-compile")
    ]


# ----------------------------------------------------------------------------- report


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def table_rows(results: list[dict], bandwidth: dict[str, dict[str, float]]) -> list[list]:
    """Rows of the report table: one per (setting, kernel, size, implementation)."""
    out = []
    for result in results:
        for group in result["groups"]:
            rows = group["rows"]
            ours = next(row for row in rows if row["impl"] == "jaxguard")
            read_bw = bandwidth[result["setting"]]["read"]
            for row in rows:
                med = row["median_s"]
                f, fg, fgd = med.get("fwd"), med.get("fwd+grad"), med.get("fwd+grad donated")
                gb = row["gb_per_s"]
                best_gb = gb.get("fwd+grad donated", gb.get("fwd+grad"))
                if row["impl"] in ("jaxguard", "empty jit"):
                    speedup = "-"
                else:
                    fwd_speedup = f / ours["median_s"]["fwd"]
                    grad_speedup = f"{fg / ours['median_s']['fwd+grad']:.2f}" if fg else "-"
                    speedup = f"{fwd_speedup:.2f} / {grad_speedup}"
                out.append(
                    [
                        result["setting"],
                        row["size"],
                        row["impl"],
                        _ms(f),
                        _ms(fg),
                        _ms(fgd),
                        f"{gb['fwd+grad']:.1f}" if fg else f"{gb['fwd']:.1f} (fwd)",
                        f"{100 * gb['fwd+grad'] / read_bw:.0f}" if fg else "",
                        f"{100 * best_gb / read_bw:.0f}" if fgd else "",
                        speedup,
                        f"{row['load'][0]:.1f}-{row['load'][1]:.1f}",
                    ]
                )
    return out


TABLE_HEADERS = (
    "setting",
    "size",
    "impl",
    "fwd ms",
    "fwd+grad ms",
    "f+g donated ms",
    "GB/s f+g",
    "% BW f+g",
    "% BW donated",
    "jaxguard speed-up fwd / f+g",
    "load",
)


def target_lines(results: list[dict], bandwidth: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, checked for every setting and kernel."""
    lines = []
    for result in results:
        setting = result["setting"]
        read_bw = bandwidth[setting]["read"]
        for kernel in ("variance", "extreme"):
            groups = [g for g in result["groups"] if g["rows"][0]["kernel"] == kernel]
            if not groups:
                continue
            for group in groups:
                rows = {row["impl"]: row for row in group["rows"]}
                ours = rows["jaxguard"]
                size = ours["size"]
                if ours["elements"] >= TARGET_ELEMENTS[kernel]:
                    fresh = 100 * ours["gb_per_s"]["fwd+grad"] / read_bw
                    donated = 100 * ours["gb_per_s"]["fwd+grad donated"] / read_bw
                    parts = [f"f+g at {fresh:.0f}% of read BW ({donated:.0f}% donated; goal 50%)"]
                    for alt, goal in (("torch-compile", 1.5), ("torch-eager", 3.0)):
                        if alt in rows:
                            theirs = rows[alt]["median_s"]["fwd+grad"]
                            ratio = theirs / ours["median_s"]["fwd+grad"]
                            into = theirs / ours["median_s"]["fwd+grad donated"]
                            parts.append(
                                f"{ratio:.2f}x vs {alt} (goal {goal}x; value_and_grad_into "
                                f"{into:.2f}x)"
                            )
                    lines.append(f"[{setting}] {kernel} {size}: " + ", ".join(parts))
                    moved = group.get("hlo_bytes", {}).get("fwd+grad")
                    if moved:
                        floor = 3 * ours["elements"] * 4
                        lines.append(
                            f"[{setting}] {kernel} {size}: XLA's cost analysis counts "
                            f"{moved / 1e6:.1f} MB accessed per f+g call against the "
                            f"{floor / 1e6:.1f} MB floor ({moved / floor:.2f}x)"
                        )
            for group in groups:
                rows = {row["impl"]: row for row in group["rows"]}
                if rows["jaxguard"]["elements"] > SMALL_SIZE:
                    continue
                floor = rows["empty jit"]["median_s"]["fwd"]
                ours = rows["jaxguard"]["median_s"]
                lines.append(
                    f"[{setting}] {kernel} {rows['jaxguard']['size']}: fwd "
                    f"{ours['fwd'] / floor:.1f}x, f+g {ours['fwd+grad'] / floor:.1f}x the "
                    f"empty-jit dispatch floor ({floor * 1e6:.1f} us; goal <= 2x)"
                )
            worst = max(
                max(errors.values()) for group in groups for errors in group["accuracy"].values()
            )
            lines.append(
                f"[{setting}] {kernel}: largest relative error vs float64 (value, gradient) "
                f"{worst:.1e} (goal 1e-5)"
            )
    return lines


def accuracy_rows(results: list[dict]) -> list[list]:
    rows = []
    for result in results:
        for group in result["groups"]:
            size = group["rows"][0]["size"]
            for data, errors in group["accuracy"].items():
                rows.append(
                    [
                        result["setting"],
                        group["rows"][0]["kernel"],
                        size,
                        data,
                        f"{errors['value']:.1e}",
                        f"{errors['grad']:.1e}",
                    ]
                )
    return rows


def compile_rows(results: list[dict]) -> list[list]:
    rows = []
    for result in results:
        for group in result["groups"]:
            for row in group["rows"]:
                for mode, seconds in row["compile_s"].items():
                    rows.append(
                        [
                            result["setting"],
                            row["kernel"],
                            row["size"],
                            row["impl"],
                            mode,
                            f"{seconds:.2f}",
                        ]
                    )
    return rows


def report(results: list[dict], notes: list[str]) -> str:
    """The Markdown report; the same text is printed."""
    bandwidth = {result["setting"]: result["bandwidth"] for result in results}
    parts = ["# jaxguard loss-kernel benchmark", ""]
    for result in results:
        parts.append(f"## Setting `{result['setting']}`")
        parts += [f"- {line}" for line in benchmarks.environment_lines(result["environment"])]
        bw = result["bandwidth"]
        parts.append(
            f"- memory bandwidth (256 MB, median): read {bw['read']:.1f} GB/s, copy into a reused "
            f"buffer {bw['copy']:.1f} GB/s, copy into a fresh array {bw['copy_fresh']:.1f} GB/s"
        )
        parts.append("")
    parts += [
        "## Times",
        "",
        "Medians. GB/s: inputs read once and the gradient written once, over the median. "
        "% BW: of the read bandwidth of the same setting. `f+g` is what a user gets "
        "(a fresh gradient array per call); `donated` writes it into a reused buffer. "
        "Speed-up: this row's time over jaxguard's (above 1: jaxguard is faster). "
        "load: 1-minute load average before and after the size's measurements.",
        "",
        benchmarks.markdown_table(TABLE_HEADERS, table_rows(results, bandwidth)),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in target_lines(results, bandwidth)],
        "",
        "## Accuracy of jaxguard's kernels vs float64 NumPy (relative)",
        "",
        benchmarks.markdown_table(
            ("setting", "kernel", "size", "data", "value", "gradient"), accuracy_rows(results)
        ),
        "",
        "## Compilation (seconds, apart from the medians)",
        "",
        benchmarks.markdown_table(
            ("setting", "kernel", "size", "impl", "mode", "s"), compile_rows(results)
        ),
    ]
    if notes:
        parts += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the run


def run_here(args) -> dict:
    """Every measurement in this process, under its current settings."""
    host_allocator = benchmarks.tune_host_allocator()  # before the first JAX computation
    torch_parts = None if args.no_torch else torch_losses()
    notes = []
    if args.no_torch:
        notes.append("torch rows skipped: --no-torch")
    elif torch_parts is None:
        notes.append("torch rows skipped: torch is not installed (pip install -e '.[bench]')")
    elif torch_device(torch_parts[0]) is None:
        notes.append(f"torch rows skipped: this torch build has no {jax.default_backend()} device")
    info = benchmarks.environment(host_allocator)
    if torch_parts is not None:
        info["torch_threads"] = torch_parts[0].get_num_threads()
    empty_jit = jax.jit(lambda pred, target: jnp.zeros((), pred.dtype))
    empty = lambda pred, target: empty_jit(pred, target).block_until_ready()
    bandwidth = measure_bandwidth(args.repeats)
    print(f"bandwidth: {bandwidth}", flush=True)
    groups = []
    for size in args.sizes:
        groups.append(benchmark_variance(size, args.repeats, torch_parts, empty))
        print(f"variance {size:.0e} done (load {benchmarks.load_average():.1f})", flush=True)
    for height in args.fields:
        groups.append(benchmark_extreme(height, args.repeats, torch_parts, empty))
        print(f"extreme {height} done (load {benchmarks.load_average():.1f})", flush=True)
    return {"environment": info, "bandwidth": bandwidth, "groups": groups, "notes": notes}


def run_in_child(setting: str, argv: list[str]) -> dict:
    """The same run in a child process with `SETTINGS[setting]` added to its environment.

    A fresh process per setting: the allocator and glibc tunables only take full
    effect before the first allocation of XLA's threads.
    """
    env = dict(os.environ)
    for name, value in SETTINGS[setting].items():
        # Lists (XLA flags, glibc tunables) are extended, anything else is replaced.
        separator = {"GLIBC_TUNABLES": ":", "XLA_FLAGS": " "}.get(name)
        env[name] = f"{env[name]}{separator}{value}" if separator and env.get(name) else value
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "benchmarks.losses", *argv, "--child-output", output]
        subprocess.run(command, env=env, check=True)
        with open(output) as f:
            return json.load(f)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.losses", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", help="variance-kernel sizes, e.g. 1e3,1e7 (elements)")
    parser.add_argument("--fields", help="extreme-kernel field edges H for [64, H, H], e.g. 64,256")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 sizes, 2 fields, 5 repeats")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"comma-separated process settings to run under: {', '.join(SETTINGS)} (or all); "
        f"default {','.join(DEFAULT_SETTINGS)}",
    )
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",") if args.sizes else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    fields = (
        args.fields.split(",") if args.fields else (QUICK_FIELDS if args.quick else DEFAULT_FIELDS)
    )
    args.sizes = [int(float(size)) for size in sizes if size]
    args.fields = [int(height) for height in fields if height]
    args.repeats = args.repeats or (5 if args.quick else 10)
    args.settings = list(SETTINGS) if args.settings == "all" else args.settings.split(",")
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"--settings: unknown {', '.join(sorted(unknown))}; known: {list(SETTINGS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child_output:
        with open(args.child_output, "w") as f:
            json.dump({"setting": args.settings[0], **run_here(args)}, f, default=float)
        return
    child_argv = [
        "--sizes", ",".join(map(str, args.sizes)),
        "--fields", ",".join(map(str, args.fields)),
        "--repeats", str(args.repeats),
        *(["--no-torch"] if args.no_torch else []),
    ]  # fmt: skip
    results = []
    for setting in args.settings:
        print(f"== setting {setting}", flush=True)
        results.append({**run_in_child(setting, child_argv), "setting": setting})
    notes = sorted({note for result in results for note in result["notes"]})
    markdown = report(results, notes)
    print()
    print(markdown)
    json_path, markdown_path = benchmarks.write_results(
        "losses", {"results": results, "notes": notes}, markdown
    )
    print(f"\nwrote {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
