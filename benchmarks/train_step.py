"""Times one jitted train step of every task model at its bundled default config.

    python -m benchmarks.train_step                      # every task in jaxguard.tasks.TASKS
    python -m benchmarks.train_step --tasks optical_depth --steps 50
    python -m benchmarks.train_step --compare torch      # optical_depth and surface vs PyTorch

Each task is built exactly as `python -m jaxguard.train --cfg NAME` builds it, with
the harness's own functions (`jaxguard.trainer.build`, `steps.make_train_step`,
`steps_per_epoch`, `iterate_batches`): same model, optax chain, composite loss and
donated-state train step. Batches are put on the device before timing, so the
numbers are the step alone. Reported per task: the first call's compilation time
(first call less the median), the median step time, steps/s and samples/s after
`--warmup` steps, and memory: XLA's footprint of the compiled step (arguments,
outputs and temporaries, less donated aliases), the device's peak where the backend
reports one, and the process's peak resident set so far (the tasks before included).
A task whose module or config cannot be loaded yet is skipped with a note. Results go
to benchmarks/results/.

`--compare torch` times the optical-depth and surface train steps beside their PyTorch
twins (`benchmarks/torch_models.py`), eager and `torch.compile`d, taking turns step by
step (`benchmarks.round_robin`). Before timing it checks that the twins are the same
model: equal parameter counts, and with jaxguard's parameters copied in, the same
evaluation-mode forward outputs and loss on the benchmark batch (relative `PARITY_RTOL`);
a mismatch aborts the comparison.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
import warnings

import jax
import numpy as np
from flax import nnx

import benchmarks
from jaxguard import batching, tasks, trainer
from jaxguard import config as config_lib
from jaxguard import steps as step_lib

#: The tasks `--compare torch` has PyTorch twins of (benchmarks/torch_models.py).
TORCH_TASKS = ("optical_depth", "surface")
#: Largest relative difference (max |jax - torch| / max |jax|) of the forward outputs and
#: of the loss accepted as "the same model" in float32.
PARITY_RTOL = 1e-4


def _megabytes(nbytes: float | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _step_footprint(train_step, state, batch) -> int | None:
    """Bytes XLA allocates for one step: arguments + outputs + temporaries - donated aliases."""
    memory = train_step.lower(state, batch).compile().memory_analysis()
    if memory is None:
        return None
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def load_task(name: str):
    """`(config, Task)` of a task from its bundled config.

    Raises:
      ImportError, SyntaxError, config.ConfigError: the task's module or config is not
        there (yet) or does not load.
    """
    return config_lib.load_config(name), tasks.get_task(name)


class HarnessStep:
    """A task's donated-state train step, built as the harness builds it (`trainer.build`,
    `task.make_loss`, `steps.make_train_step`), over a cycle of training batches already on
    the device; each call runs one step and waits for it.

    Attributes:
      splits, run, loss_fn, train_step: what the harness builds from the config.
      param_count: the model's parameters.
      host_batches: the first `count` training batches (at most an epoch's), as host arrays.
      batches: the same, placed as the harness places them; state: the state after the last call.
    """

    def __init__(self, config, task, count: int):
        self.splits = task.make_splits(config)
        self.run = trainer.build(config, task, self.splits)
        self.loss_fn = task.make_loss(config, self.splits, self.run.steps_per_epoch)
        self.train_step = step_lib.make_train_step(
            self.run.graphdef, task, self.loss_fn, self.run.tx, self.run.schedule
        )
        self.param_count = sum(
            int(np.prod(p.shape)) for p in jax.tree.leaves(self.run.state.params)
        )
        batch_sharding, replicated = batching.data_sharding()
        train = self.splits["train"]
        self.host_batches = [
            dict(batch)
            for batch in itertools.islice(
                batching.iterate_batches(
                    train, config.train.batch_size, seed=config.seed, drop_last=True
                ),
                min(self.run.steps_per_epoch, count),
            )
        ]
        self.batches = [jax.device_put(batch, batch_sharding) for batch in self.host_batches]
        self.state = jax.device_put(self.run.state, replicated)
        self._cycle = itertools.cycle(self.batches)

    def __call__(self) -> None:
        self.state, measurements = self.train_step(self.state, next(self._cycle))
        jax.block_until_ready((self.state, measurements))


def benchmark_task(name: str, config, task, steps: int, warmup: int) -> dict:
    """Builds `name`'s model, loss and train step as the harness does and times the step."""
    step = HarnessStep(config, task, steps + warmup + 1)
    batch_size = config.train.batch_size
    start = time.perf_counter()
    step()
    first_call = time.perf_counter() - start
    for _ in range(warmup):
        step()
    load_start = benchmarks.load_average()
    times = benchmarks.round_robin({"step": step}, steps)["step"]
    median = float(np.median(times))
    # After timing: reuses the compile.
    footprint = _step_footprint(step.train_step, step.state, step.batches[0])
    return {
        "task": name,
        "params": step.param_count,
        "batch_size": batch_size,
        "compile_s": first_call - median,
        "median_s": median,
        "min_s": float(np.min(times)),
        "steps_per_s": 1.0 / median,
        "samples_per_s": batch_size / median,
        "step_footprint_bytes": footprint,
        "device_peak_bytes": _device_peak(),
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load": [load_start, benchmarks.load_average()],
    }


class ParityError(AssertionError):
    """A PyTorch twin is not the same model as jaxguard's: the comparison is off."""


def _relative_difference(reference, other) -> float:
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    scale = max(float(np.max(np.abs(reference))), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(reference - other))) / scale


def _torch_twin(name: str, config, splits, torch_models):
    """`(model, loss_of(model, batch) -> total)` of the task's PyTorch twin."""
    if name == "optical_depth":
        loss = torch_models.optical_depth_loss(config)
        return torch_models.optical_depth_model(config), lambda m, b: loss(m(b["frames"]), b)
    if name == "surface":
        from jaxguard.tasks.surface.loss import focal_settings

        loss = torch_models.surface_loss(config, *focal_settings(config, splits))
        model = torch_models.surface_model(config)
        return model, lambda m, b: loss(torch_models.surface_forward(m, b))
    raise ValueError(f"--compare torch: no PyTorch twin of {name!r}; choose {TORCH_TASKS}")


def check_parity(name, task, step: HarnessStep, batch, twin, loss_of, torch) -> dict:
    """Equal parameter counts, and (jaxguard's parameters copied in) the same evaluation-mode
    outputs and loss on `batch`. Returns the differences; raises `ParityError` on a mismatch."""
    run, loss_fn, params = step.run, step.loss_fn, step.param_count
    twin_params = sum(p.numel() for p in twin.parameters())
    if params != twin_params:
        raise ParityError(
            f"{name}: jaxguard has {params:,} parameters, the PyTorch twin {twin_params:,}"
        )
    model = nnx.merge(run.graphdef, run.state.params, run.state.model_state)
    model.eval()
    outputs = task.forward(model, batch)
    total, _ = loss_fn(task.loss_inputs(outputs, batch), step=0)
    output_key = "pred" if "pred" in outputs else "logits"
    twin.eval()
    torch_batch = {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}
    with torch.no_grad():
        twin_total = loss_of(twin, torch_batch)
        twin_outputs = (
            twin(torch_batch["frames"]) if output_key == "pred" else twin(torch_batch["volume"])
        )
    twin.train()
    result = {
        "params": params,
        "output_rel_diff": _relative_difference(outputs[output_key], twin_outputs.numpy()),
        "loss_jax": float(total),
        "loss_torch": float(twin_total),
        "loss_rel_diff": _relative_difference(total, twin_total.numpy()),
    }
    for key in ("output_rel_diff", "loss_rel_diff"):
        if not result[key] <= PARITY_RTOL:
            raise ParityError(
                f"{name}: jaxguard and its PyTorch twin differ, {key} = {result[key]:.2e} > "
                f"{PARITY_RTOL:.0e} (loss {result['loss_jax']:.6g} vs {result['loss_torch']:.6g})"
            )
    return result


def compare_torch_task(name: str, config, task, steps: int, warmup: int, torch_models) -> dict:
    """jaxguard's train step of `name` and its PyTorch twin's, eager and compiled, in turns."""
    import torch

    jax_step = HarnessStep(config, task, steps + warmup + 1)
    run, host_batches = jax_step.run, jax_step.host_batches
    batch_size = config.train.batch_size
    parity = {}
    twins = {}
    for impl in ("torch-eager", "torch-compile"):
        twin, loss_of = _torch_twin(name, config, jax_step.splits, torch_models)
        torch_models.load_params(twin, nnx.to_pure_dict(run.state.params))
        if impl == "torch-eager":
            parity = check_parity(name, task, jax_step, host_batches[0], twin, loss_of, torch)
        else:
            loss_of = torch.compile(loss_of)
        optimizer, scheduler = torch_models.make_optimizer(
            twin, config.optim, run.steps_per_epoch, run.steps_per_epoch * config.train.epochs
        )
        twins[impl] = (twin, loss_of, optimizer, scheduler)
    torch_batches = [
        {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}
        for batch in host_batches
    ]

    def torch_step(impl):
        twin, loss_of, optimizer, scheduler = twins[impl]
        cycle = itertools.cycle(torch_batches)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(twin, next(cycle))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), config.optim.clip_norm)
            optimizer.step()
            scheduler.step()

        return step

    calls = {"jaxguard": jax_step, **{impl: torch_step(impl) for impl in twins}}
    first_call = {}
    for impl, call in calls.items():
        start = time.perf_counter()
        call()
        first_call[impl] = time.perf_counter() - start
        print(f"{name} {impl}: first call {first_call[impl]:.2f} s", flush=True)
    for _ in range(warmup):
        for call in calls.values():
            call()
    load_start = benchmarks.load_average()
    times = benchmarks.round_robin(calls, steps)
    load_end = benchmarks.load_average()
    rows = []
    for impl, impl_times in times.items():
        median = float(np.median(impl_times))
        rows.append(
            {
                "impl": impl,
                "first_call_s": first_call[impl],
                "compile_s": first_call[impl] - median,
                "median_s": median,
                "min_s": float(np.min(impl_times)),
                "steps_per_s": 1.0 / median,
                "times_s": impl_times,
            }
        )
    jax_median = rows[0]["median_s"]
    for row in rows:
        row["jaxguard_speedup"] = row["median_s"] / jax_median
    return {
        "task": name,
        "params": parity["params"],
        "batch_size": batch_size,
        "parity": parity,
        "rows": rows,
        "load": [load_start, load_end],
    }


def torch_threads_note(torch) -> str:
    """Sets torch's intra-op threads to the cores XLA:CPU's pool uses; says so."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    return (
        f"threads: XLA:CPU runs one intra-op thread per usable core ({cores}); "
        f"torch.set_num_threads({cores}), torch.get_num_threads() = {torch.get_num_threads()}"
    )


def compare_torch(args, names: list[str]) -> None:
    """`--compare torch`: the table of jaxguard vs PyTorch eager and torch.compile."""
    try:
        import torch

        from benchmarks import torch_models
    except ImportError as error:
        raise SystemExit(
            f"--compare torch needs PyTorch ({error}); pip install -e '.[bench]'"
        ) from error
    info = benchmarks.environment(benchmarks.tune_host_allocator())
    if info["backend"] != "cpu":
        raise SystemExit(
            f"--compare torch times the CPU build of torch on the CPU; JAX runs on "
            f"{info['backend']}: run with JAX_PLATFORMS=cpu"
        )
    info["torch_threads_note"] = torch_threads_note(torch)
    # Cold compiles on both sides: JAX has no persistent compilation cache unless one is set.
    jax_cache = jax.config.jax_compilation_cache_dir
    if not args.torch_cache:
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    info["compile_caches_note"] = (
        f"compile caches: torch.compile's on-disk caches {'on' if args.torch_cache else 'off'}"
        f" (--torch-cache), JAX's persistent cache {jax_cache or 'off'}"
    )
    info["torch_threads"] = torch.get_num_threads()
    results = []
    for name in names:
        config, task = load_task(name)
        if args.batch_size:
            config.train.batch_size = args.batch_size
        try:
            results.append(
                compare_torch_task(name, config, task, args.steps, args.warmup, torch_models)
            )
        except ParityError as error:
            raise SystemExit(f"comparison aborted, not the same model: {error}") from error
        for row in results[-1]["rows"]:
            print(f"{name} {row['impl']}: {row['median_s'] * 1e3:.2f} ms/step", flush=True)

    headers = (
        "model",
        "params",
        "batch",
        "implementation",
        "first call s",
        "compile s",
        "median ms",
        "steps/s",
        "jaxguard speed-up",
        "load",
    )
    table = [
        [
            result["task"],
            f"{result['params']:,}",
            result["batch_size"],
            row["impl"],
            f"{row['first_call_s']:.2f}",
            "-" if row["impl"] == "torch-eager" else f"{row['compile_s']:.2f}",
            f"{row['median_s'] * 1e3:.2f}",
            f"{row['steps_per_s']:.1f}",
            "" if row["impl"] == "jaxguard" else f"{row['jaxguard_speedup']:.2f}x",
            f"{result['load'][0]:.1f}-{result['load'][1]:.1f}",
        ]
        for result in results
        for row in result["rows"]
    ]
    parity_lines = [
        f"{r['task']}: {r['params']:,} parameters each; outputs max rel. diff "
        f"{r['parity']['output_rel_diff']:.1e}, loss {r['parity']['loss_jax']:.6g} vs "
        f"{r['parity']['loss_torch']:.6g} (rel. diff {r['parity']['loss_rel_diff']:.1e})"
        for r in results
    ]
    markdown = "\n".join(
        [
            "# jaxguard train step vs PyTorch",
            "",
            *[f"- {line}" for line in benchmarks.environment_lines(info)],
            f"- {info['torch_threads_note']}",
            f"- {info['compile_caches_note']}",
            f"- {args.steps} timed steps per implementation, taken in turns (shuffled each "
            f"round), after {args.warmup} warm-up steps; compile s = first call less the median "
            "(eager: nothing to compile); "
            "jaxguard speed-up = the implementation's median / jaxguard's (> 1: jaxguard faster)",
            f"- parity (jaxguard parameters copied into the twin, evaluation mode, rel. "
            f"tolerance {PARITY_RTOL:.0e}):",
            *[f"  - {line}" for line in parity_lines],
            "",
            benchmarks.markdown_table(headers, table),
        ]
    )
    print()
    print(markdown)
    json_path, markdown_path = benchmarks.write_results(
        "train_step_torch", {"environment": info, "results": results}, markdown
    )
    print(f"\nwrote {json_path} and {markdown_path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", help=f"comma-separated, default all: {', '.join(tasks.TASKS)}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per task")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument(
        "--compare",
        choices=("torch",),
        help=f"time {', '.join(TORCH_TASKS)} beside PyTorch twins, eager and torch.compile",
    )
    parser.add_argument(
        "--batch-size", type=int, help="with --compare: override the configs' train.batch_size"
    )
    parser.add_argument(
        "--torch-cache",
        action="store_true",
        help="with --compare: let torch.compile reuse its on-disk caches (warm compile times)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare:
        compare_torch(args, args.tasks.split(",") if args.tasks else list(TORCH_TASKS))
        return
    names = args.tasks.split(",") if args.tasks else list(tasks.TASKS)

    info = benchmarks.environment(benchmarks.tune_host_allocator())
    rows, notes = [], []
    for name in names:
        try:
            config, task = load_task(name)
        except (ImportError, SyntaxError, config_lib.ConfigError) as error:
            # A task being written may not import or have its config yet: say so, go on.
            notes.append(f"{name}: skipped, not loadable yet ({type(error).__name__}: {error})")
            print(notes[-1], flush=True)
            continue
        row = benchmark_task(name, config, task, args.steps, args.warmup)
        rows.append(row)
        print(f"{name}: {row['median_s'] * 1e3:.2f} ms/step", flush=True)

    headers = (
        "task",
        "params",
        "batch",
        "compile s",
        "median ms",
        "steps/s",
        "samples/s",
        "step footprint MB",
        "device peak MB",
        "process peak RSS so far MB",
        "load",
    )
    table = [
        [
            row["task"],
            f"{row['params']:,}",
            row["batch_size"],
            f"{row['compile_s']:.2f}",
            f"{row['median_s'] * 1e3:.2f}",
            f"{row['steps_per_s']:.1f}",
            f"{row['samples_per_s']:.0f}",
            _megabytes(row["step_footprint_bytes"]),
            _megabytes(row["device_peak_bytes"]),
            _megabytes(row["process_peak_rss_bytes"]),
            f"{row['load'][0]:.1f}-{row['load'][1]:.1f}",
        ]
        for row in rows
    ]
    markdown = "\n".join(
        [
            "# jaxguard train-step benchmark",
            "",
            *[f"- {line}" for line in benchmarks.environment_lines(info)],
            f"- {args.steps} timed steps after {args.warmup} warm-up steps; batches already "
            "on the device; compilation is the first call less the median",
            "",
            benchmarks.markdown_table(headers, table),
            *(["", "## Notes", "", *[f"- {note}" for note in notes]] if notes else []),
        ]
    )
    print()
    print(markdown)
    json_path, markdown_path = benchmarks.write_results(
        "train_step", {"environment": info, "rows": rows, "notes": notes}, markdown
    )
    print(f"\nwrote {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
