"""What the guards and logging cost: a default epoch with everything on against it all off.

    python -m benchmarks.guard_overhead                       # every task, 2 rounds
    python -m benchmarks.guard_overhead --tasks optical_depth --rounds 3

For each task, its bundled default config is trained in this process, alternating three
settings round after round (so a change in the machine's load hits all alike):

- **on**: the config as bundled: every guard it enables, the loss-term gradient shares on the
  diagnostics cadence (`log.term_gradients`), the ensemble drawn for `guard.ensemble_spread`;
- **off**: every guard section with an `enabled` key switched off, `log.term_gradients` off,
  and `guard.best.monitor` set to early stopping's monitor, so checkpoints are chosen and
  written as in "on" (the non-finite guard cannot be switched off; it reads counters the train
  step computes anyway);
- **all off**: "off", and no diagnostics (`log.diagnostics_every_steps` beyond the run) and no
  TensorBoard (`log.tensorboard=False`: no event file, no per-evaluation histograms or images).

Each run trains `--epochs` epochs (3; more when the task's lr warm-up is longer); the first
includes compilation and is left out, the others are timed from the end of one epoch's
checkpoint to the next (train steps, logging, diagnostics, evaluation, guards, checkpoint).
Reported: the median epoch seconds of each setting and the overhead of "on" over each of the
others. Results go to benchmarks/results/guard_overhead-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import benchmarks
from jaxguard import config as config_lib
from jaxguard import tasks, trainer
from jaxguard.writers import Console


def guards_off(config) -> list[str]:
    """Overrides that switch off every guard `config` has, and the term gradients."""
    overrides = ["log.term_gradients=False"]
    for name, section in config.guard.items():
        if name != "best" and "enabled" in section:
            overrides.append(f"guard.{name}.enabled=False")
    stop = config.guard.early_stopping
    if config.guard.best.monitor is None and stop.enabled:
        overrides += [
            f"guard.best.monitor={stop.monitor}",
            f"guard.best.mode={stop.mode}",
            f"guard.best.start_epoch={stop.start_epoch}",
        ]
    return overrides


def all_off(config) -> list[str]:
    """`guards_off`, and no diagnostics and no TensorBoard."""
    return [*guards_off(config), f"log.diagnostics_every_steps={10**9}", "log.tensorboard=False"]


def epoch_seconds(name: str, overrides: Sequence[str], epochs: int, workdir: str) -> list[float]:
    """Seconds of each epoch after the first, from one run of task `name` with `overrides`."""
    config = config_lib.load_config(
        name, [*overrides, f"train.epochs={epochs}", "log.progress=False"]
    )
    ends = []
    trainer.train_and_evaluate(
        config,
        workdir,
        console=Console(io.StringIO(), progress=False),
        on_epoch_end=lambda epoch: ends.append(time.perf_counter()),
    )
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def measure(name: str, rounds: int, epochs: int) -> dict:
    config = config_lib.load_config(name)
    # A run must outlast its lr warm-up (the config check refuses it otherwise: surface's is 5).
    epochs = max(epochs, math.floor(config.optim.warmup_epochs) + 1)
    settings = {"on": [], "off": guards_off(config), "all off": all_off(config)}
    seconds: dict[str, list[float]] = {setting: [] for setting in settings}
    loads = [benchmarks.load_average()]
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(rounds):
            for setting, overrides in settings.items():
                workdir = f"{scratch}/{setting}-{round_index}"
                seconds[setting] += epoch_seconds(name, overrides, epochs, workdir)
                print(f"{name} {setting} round {round_index}: {seconds[setting][-1]:.2f} s/epoch")
    loads.append(benchmarks.load_average())
    on, off, none = (statistics.median(seconds[s]) for s in settings)
    return {
        "task": name,
        "on_s": on,
        "off_s": off,
        "all_off_s": none,
        "overhead": on / off - 1,
        "overhead_all": on / none - 1,
        "epochs_timed": {s: len(v) for s, v in seconds.items()},
        "off_overrides": settings["off"],
        "all_off_overrides": settings["all off"],
        "load": loads,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.guard_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", help=f"comma-separated, default all: {', '.join(tasks.TASKS)}")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, alternated")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first untimed)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch compiles and is not timed")
    names = args.tasks.split(",") if args.tasks else list(tasks.TASKS)
    info = benchmarks.environment(benchmarks.tune_host_allocator())
    rows = [measure(name, args.rounds, args.epochs) for name in names]
    table = benchmarks.markdown_table(
        (
            "task",
            "epoch s, all on",
            "guards off",
            "all off",
            "overhead vs guards off",
            "overhead vs all off",
            "epochs timed",
            "load",
        ),
        [
            [
                row["task"],
                f"{row['on_s']:.2f}",
                f"{row['off_s']:.2f}",
                f"{row['all_off_s']:.2f}",
                f"{row['overhead']:+.1%}",
                f"{row['overhead_all']:+.1%}",
                row["epochs_timed"]["on"],
                " -> ".join(f"{load:.1f}" for load in row["load"]),
            ]
            for row in rows
        ],
    )
    markdown = "\n".join(
        [
            "# Guard overhead",
            "",
            *benchmarks.environment_lines(info),
            "",
            f"{args.rounds} rounds of {args.epochs}-epoch runs per setting, alternated; medians "
            "of the epochs after the first.",
            "",
            table,
        ]
    )
    json_path, markdown_path = benchmarks.write_results(
        "guard_overhead", {"environment": info, "rows": rows}, markdown
    )
    print(markdown)
    print(f"\nwritten: {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
