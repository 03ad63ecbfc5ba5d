"""Times one jitted train step of every task model at its bundled default config.

    python -m benchmarks.train_step                      # every task in jaxguard.tasks.TASKS
    python -m benchmarks.train_step --tasks optical_depth --steps 50

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
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time

import jax
import numpy as np

import benchmarks
from jaxguard import batching, tasks, trainer
from jaxguard import config as config_lib


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


def benchmark_task(name: str, config, task, steps: int, warmup: int) -> dict:
    """Builds `name`'s model, loss and train step as the harness does and times the step."""
    splits = task.make_splits(config)
    run = trainer.build(config, task, splits)
    loss_fn = task.make_loss(config, splits, run.steps_per_epoch)
    train_step = steps.make_train_step(run.graphdef, task, loss_fn, run.tx, run.schedule)
    batch_sharding, replicated = batching.data_sharding()
    batch_size = config.train.batch_size
    per_epoch = batching.steps_per_epoch(config, batching.split_size(splits["train"]))
    batches = [
        jax.device_put(dict(batch), batch_sharding)
        for batch in itertools.islice(
            batching.iterate_batches(splits["train"], batch_size, seed=config.seed, drop_last=True),
            min(per_epoch, steps + warmup + 1),
        )
    ]
    state = jax.device_put(run.state, replicated)
    batch_cycle = itertools.cycle(batches)

    def step():
        nonlocal state
        state, measurements = train_step(state, next(batch_cycle))
        jax.block_until_ready((state, measurements))

    start = time.perf_counter()
    step()
    first_call = time.perf_counter() - start
    for _ in range(warmup):
        step()
    load_start = benchmarks.load_average()
    times = benchmarks.round_robin({"step": step}, steps)["step"]
    median = float(np.median(times))
    footprint = _step_footprint(train_step, state, batches[0])  # after timing: reuses the compile
    return {
        "task": name,
        "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(run.state.params)),
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", help=f"comma-separated, default all: {', '.join(tasks.TASKS)}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per task")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
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
