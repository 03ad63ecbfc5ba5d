"""The failure zoo: each seed failure reproduced by a learning model, and the guard catching it.

    .venv/bin/python -m benchmarks.zoo                 # every row, seeds 0 and 1, the defaults
    .venv/bin/python -m benchmarks.zoo --only overfitting --seeds 0
    .venv/bin/python -m benchmarks.zoo --only lenient done --defaults pointer  # the pointer rows
    .venv/bin/python -m benchmarks.zoo --reuse         # keep runs already in the run folder

Each row of `ZOO` names a failure from the seed post-mortems, the config variant that
reproduces it on embedded data (`failure`) and its healthy twin (`twin`, the seed's fix on the
same data). Both are trained with `python -m jaxguard.train` for every seed, in child processes,
one at a time. From each run's files (`log.csv`, `test_metrics.json`, `guard_events.jsonl`)
the row measures:

- the failure signal of the failure run and of its twin (`signal`), and whether the failure
  reproduced (`reproduced`: a comparison with the twin, stated in `criterion`);
- the onset (`onset`: the first evaluation at which the failure shows in the per-epoch log)
  and the first "warn" or "stop" event of the guards meant to catch it (`guards`), with the
  number of evaluations between the two;
- false alarms: any "warn" or "stop" event on the twin (early stopping's own stop excepted).

The four default configs are run too, for their false alarms. Results go to
`benchmarks/results/zoo-<time>.{md,json}`; runs to `benchmarks/results/zoo-runs/` (or
`--run-dir`). Targets: every row reproduced and caught within `MAX_EVALUATIONS_LATE`
evaluations of its onset, no false alarm on a twin or a default.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import benchmarks
from jaxguard.run_outputs import read_events

#: A guard's event counts as catching the failure this many evaluations after onset at most.
MAX_EVALUATIONS_LATE = 3
DEFAULT_CONFIGS = (
    "configs/optical_depth.py",
    "configs/cvae.py",
    "configs/pointer.py",
    "configs/surface.py",
)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What one finished run left on disk.

    Attributes:
      spec: The `--cfg` it was run with; seed: its `config.seed`; workdir: its folder.
      config: `config.json`; summary: `test_metrics.json` (best_epoch, epochs_run, ...).
      history: The rows of `log.csv` as floats, one per epoch.
      events: `guard_events.jsonl`; seconds: wall time of the child process.
    """

    spec: str
    seed: int
    workdir: str
    config: dict
    summary: dict
    history: tuple[dict[str, float], ...]
    events: tuple[dict, ...]
    seconds: float

    @property
    def test(self) -> dict:
        """The test-split metrics of the kept checkpoint."""
        return self.summary["test"]

    def column(self, key: str) -> list[float]:
        return [row[key] for row in self.history]


@dataclasses.dataclass(frozen=True)
class Failure:
    """One row of the zoo.

    Attributes:
      name: The failure, as the post-mortem describes it; seed: which post-mortem.
      failure, twin: `--cfg` specs of the reproduction and of its healthy twin.
      guards: Names of the guards whose "warn"/"stop" catches it.
      signal: Figures of one run that show the failure (shown for failure and twin).
      reproduced: `(failure figures, twin figures) -> bool`.
      criterion: `reproduced` in words, for the table.
      onset: The epoch at which the failure shows in the failure run's log, or None.
      missing: Why no variant reproduces the failure yet (the row is reported, not run), or "".
    """

    name: str
    seed: str
    failure: str
    twin: str
    guards: tuple[str, ...]
    signal: Callable[[RunRecord], dict[str, float]]
    reproduced: Callable[[dict[str, float], dict[str, float]], bool]
    criterion: str
    onset: Callable[[RunRecord], int | None]
    missing: str = ""


def first_epoch(record: RunRecord, condition: Callable[[dict[str, float]], bool]) -> int | None:
    """The first epoch whose log row meets `condition`."""
    for row in record.history:
        if condition(row):
            return int(row["epoch"])
    return None


def largest_jump(values: Sequence[float]) -> float:
    """The largest rise from one value to the next, relative to the previous one; 0 if none."""
    jumps = [(b - a) / abs(a) for a, b in zip(values, values[1:], strict=False) if a != 0]
    return max([0.0, *jumps])


def overfit_onset(record: RunRecord, rise: float = 0.1) -> int | None:
    """The first epoch with val loss `rise` above its best so far while train loss is below the
    train loss of that best epoch."""
    best = None
    for row in record.history:
        if best is None or row["val_loss"] < best["val_loss"]:
            best = row
        elif (
            row["val_loss"] > best["val_loss"] * (1 + rise)
            and row["train_loss"] < best["train_loss"]
        ):
            return int(row["epoch"])
    return None


ZOO: tuple[Failure, ...] = (
    Failure(
        name="variance collapse",
        seed="000/001",
        failure="configs/optical_depth.py:collapse",
        twin="configs/optical_depth.py:collapse_fixed",
        guards=("collapse", "disagreement"),
        signal=lambda r: {"test std ratio": r.test["std_ratio"], "test R2": r.test["r2"]},
        reproduced=lambda f, t: f["test std ratio"] < 0.4 <= t["test std ratio"],
        criterion="test std ratio below 0.4 (twin at or above)",
        onset=lambda r: first_epoch(r, lambda row: row["val_std_ratio"] < 0.4),
    ),
    Failure(
        name="extreme term cut by the ratio bug",
        seed="002",
        failure="configs/cvae.py:zoo_ratio_bug",
        twin="configs/cvae.py:zoo_fixed",
        guards=("loss_terms",),
        signal=lambda r: {"test tail MAE": r.test["mae_tail"]},
        reproduced=lambda f, t: f["test tail MAE"] > 1.1 * t["test tail MAE"],
        criterion="test tail MAE more than 10% above the twin's",
        onset=lambda r: 0,  # The bug is in the loss from the first step.
    ),
    Failure(
        name="KL warm-up unfinished at the best epoch",
        seed="002",
        failure="configs/cvae.py:zoo_before_fix",
        twin="configs/cvae.py:zoo_fixed",
        guards=("warmup",),
        signal=lambda r: {"KL weight at best / final": kl_weight_at_best(r)},
        reproduced=lambda f, t: f["KL weight at best / final"] < 0.5,
        criterion="the best checkpoint's KL weight below half its final value",
        onset=lambda r: 0,  # Early stopping can end the run inside the warm-up from the start.
    ),
    Failure(
        name="volatile early-stopping metric",
        seed="002",
        failure="configs/cvae.py:zoo_before_fix",
        twin="configs/cvae.py:zoo_fixed",
        guards=("volatility",),
        signal=lambda r: {
            "largest rise of val rec_loss": largest_jump(r.column("val_rec_loss")),
            "largest rise of val MAE": largest_jump(r.column("val_mae_all")),
        },
        reproduced=lambda f, t: f["largest rise of val rec_loss"] > 1.0,
        criterion="val rec_loss more than doubles from one epoch to the next",
        onset=lambda r: first_epoch(
            r,
            lambda row: (
                row["epoch"] > 0
                and row["val_rec_loss"] > 2 * r.history[int(row["epoch"]) - 1]["val_rec_loss"]
            ),
        ),
    ),
    Failure(
        name="plateau from class imbalance",
        seed="003",
        failure="configs/surface.py:imbalance",
        twin="configs/surface.py:imbalance_fixed",
        guards=("majority_class", "plateau"),
        signal=lambda r: {
            "val predicted foreground (last)": r.history[-1]["val_fg_fraction_pred"],
            "test dice": r.test["dice"],
        },
        reproduced=lambda f, t: (
            f["val predicted foreground (last)"] > 0.95 > t["val predicted foreground (last)"]
        ),
        criterion="the last evaluation predicts > 95% foreground (twin below)",
        onset=lambda r: 0,
    ),
    Failure(
        name="done flag never predicted",
        seed="004",
        failure="configs/pointer.py:done_unweighted",
        twin="configs/pointer.py",
        guards=("done_never_predicted",),
        signal=lambda r: {"test done F1": r.test["done_f1"]},
        reproduced=lambda f, t: f["test done F1"] < 0.1 < t["test done F1"],
        criterion="test done F1 below 0.1 (twin above)",
        onset=lambda r: first_epoch(r, lambda row: row["val_done_f1"] == 0.0),
    ),
    Failure(
        name="overfitting past the best epoch",
        seed="004",
        failure="configs/pointer.py:overfit",
        twin="configs/pointer.py:overfit_fixed",
        guards=("overfitting",),
        signal=lambda r: {
            "test loss": r.test["loss"],
            "val loss rise past best": max(r.column("val_loss")) / min(r.column("val_loss")),
        },
        reproduced=lambda f, t: f["test loss"] > 1.5 * t["test loss"],
        criterion="test loss of the kept weights 1.5x the twin's (seed: val loss 0.61 -> 1.51)",
        onset=overfit_onset,
    ),
    Failure(
        name="lenient distance threshold",
        seed="004",
        failure="configs/pointer.py:lenient",
        twin="configs/pointer.py:lenient_fixed",
        guards=("lenient_threshold", "loss_terms", "disagreement"),
        signal=lambda r: {
            "test median pixel error": r.test["pixel_error_median"],
            "test mean pixel error": r.test["pixel_error_mean"],
        },
        reproduced=lambda f, t: f["test median pixel error"] > 1.5 * t["test median pixel error"],
        criterion="test median pixel error (seed: stuck at 7-30 px) 1.5x the twin's",
        onset=lambda r: 0,
    ),
    Failure(
        name="ensemble collapse",
        seed="002 (found here)",
        failure="configs/cvae.py:zoo_mean_only",
        twin="configs/cvae.py:zoo_fixed",
        guards=("ensemble_spread",),
        signal=lambda r: {"val spread/skill (last)": r.history[-1]["val_spread_skill"]},
        reproduced=lambda f, t: f["val spread/skill (last)"] < 0.5 <= t["val spread/skill (last)"],
        criterion="spread/skill below 0.5 (twin at or above)",
        onset=lambda r: first_epoch(r, lambda row: row["val_spread_skill"] < 0.5),
    ),
)


# ----------------------------------------------------------------------------- running


def workdir_for(run_dir: str, spec: str, seed: int) -> str:
    name = spec.removeprefix("configs/").replace(".py", "").replace(":", "-") or "run"
    return os.path.join(run_dir, f"{name}-seed{seed}")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_record(spec: str, seed: int, workdir: str, seconds: float) -> RunRecord:
    with open(os.path.join(workdir, "log.csv")) as f:
        history = tuple(
            {key: float(value) if value else math.nan for key, value in row.items()}
            for row in csv.DictReader(f)
        )
    return RunRecord(
        spec,
        seed,
        workdir,
        read_json(os.path.join(workdir, "config.json")),
        read_json(os.path.join(workdir, "test_metrics.json")),
        history,
        tuple(read_events(workdir)),
        seconds,
    )


def kl_weight_at_best(record: RunRecord) -> float:
    """The KL weight at the kept checkpoint's last step over its final value (linear warm-up)."""
    warmup = record.config["loss"]["beta_warmup_epochs"]
    return 1.0 if warmup <= 0 else min(1.0, (record.summary["best_epoch"] + 1) / warmup)


def train(spec: str, seed: int, run_dir: str, reuse: bool) -> RunRecord:
    """Trains `spec` with `seed` in a child process (or reuses a finished run); its record."""
    workdir = workdir_for(run_dir, spec, seed)
    timing = workdir + ".seconds"
    if reuse and os.path.exists(os.path.join(workdir, "test_metrics.json")):
        seconds = float(open(timing).read()) if os.path.exists(timing) else math.nan
        return read_record(spec, seed, workdir, seconds)
    if os.path.exists(workdir):
        subprocess.run(["rm", "-rf", workdir], check=True)
    command = [
        sys.executable,
        "-m",
        "jaxguard.train",
        "--cfg",
        spec,
        "--workdir",
        workdir,
        f"--cfg.seed={seed}",
        "--cfg.log.progress=False",
    ]
    print(f"[zoo] {spec} seed {seed} ...", flush=True)
    started = time.monotonic()
    with open(workdir + ".console.txt", "w") as console:
        subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, check=True)
    seconds = time.monotonic() - started
    with open(timing, "w") as f:
        f.write(f"{seconds:.1f}\n")
    print(f"[zoo]   done in {seconds:.0f} s", flush=True)
    return read_record(spec, seed, workdir, seconds)


def alarms(record: RunRecord) -> list[dict]:
    """The run's "warn" and "stop" events, early stopping's own stop excepted."""
    return [
        event
        for event in record.events
        if event["level"] in ("warn", "stop")
        and not (event["guard"] == "early_stopping" and event["level"] == "stop")
    ]


def judge(row: Failure, failure: RunRecord, twin: RunRecord) -> dict:
    """The row's figures for one seed."""
    failure_signal, twin_signal = row.signal(failure), row.signal(twin)
    onset = row.onset(failure)
    catches = [
        event
        for event in failure.events
        if event["guard"] in row.guards and event["level"] in ("warn", "stop")
    ]
    caught = catches[0] if catches else None
    late = None if caught is None or onset is None else caught["epoch"] - onset
    return {
        "seed": failure.seed,
        "failure_signal": failure_signal,
        "twin_signal": twin_signal,
        "reproduced": bool(row.reproduced(failure_signal, twin_signal)),
        "onset_epoch": onset,
        "caught_by": None if caught is None else caught["guard"],
        "caught_epoch": None if caught is None else caught["epoch"],
        "evaluations_after_onset": late,
        "caught_in_time": caught is not None and late is not None and late <= MAX_EVALUATIONS_LATE,
        "message": None if caught is None else caught["message"],
        "twin_alarms": [f"{e['guard']} {e['level']} @ {e['epoch']}" for e in alarms(twin)],
        "seconds": {"failure": failure.seconds, "twin": twin.seconds},
    }


# ----------------------------------------------------------------------------- report


def figures(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.3g}" for key, value in values.items())


def report(rows: list[dict], defaults: list[dict], info: dict) -> str:
    table = []
    for row in rows:
        if row["missing"]:
            table.append(
                [f"{row['name']} ({row['seed_file']})", "-", "-", row["missing"], "-"]
                + ["**no**", "-", "-"]
            )
        for result in row["seeds"]:
            late = result["evaluations_after_onset"]
            caught = (
                f"{result['caught_by']} at epoch {result['caught_epoch']} "
                f"({'+' if late is not None and late >= 0 else ''}{late} after onset "
                f"{result['onset_epoch']})"
                if result["caught_by"]
                else "no"
            )
            table.append(
                [
                    f"{row['name']} ({row['seed_file']})",
                    f"`{row['failure']}` / `{row['twin']}`",
                    result["seed"],
                    figures(result["failure_signal"]),
                    figures(result["twin_signal"]),
                    "yes" if result["reproduced"] else "**no**",
                    caught if result["caught_in_time"] else f"**{caught}**",
                    ", ".join(result["twin_alarms"]) or "none",
                ]
            )
    default_rows = [
        [f"`{d['spec']}`", d["seed"], ", ".join(d["alarms"]) or "none", f"{d['seconds']:.0f}"]
        for d in defaults
    ]
    reproduced = sum(
        bool(row["seeds"]) and all(r["reproduced"] for r in row["seeds"]) for row in rows
    )
    caught = sum(
        bool(row["seeds"]) and all(r["caught_in_time"] for r in row["seeds"]) for row in rows
    )
    false_alarms = sum(bool(r["twin_alarms"]) for row in rows for r in row["seeds"]) + sum(
        bool(d["alarms"]) for d in defaults
    )
    lines = [
        "# Failure zoo",
        "",
        *benchmarks.environment_lines(info),
        "",
        f"Rows reproduced on every seed: {reproduced} of {len(rows)}; caught within "
        f"{MAX_EVALUATIONS_LATE} evaluations of onset on every seed: {caught} of {len(rows)}; "
        f"runs with a false alarm (twins and defaults): {false_alarms}.",
        "",
        benchmarks.markdown_table(
            (
                "failure (seed)",
                "failure / twin config",
                "seed",
                "failure signal",
                "twin signal",
                "reproduced",
                "guard fired",
                "twin alarms",
            ),
            table,
        ),
        "",
        "Criteria: " + "; ".join(f"{row['name']}: {row['criterion']}" for row in rows) + ".",
        "",
        "## Defaults",
        "",
        benchmarks.markdown_table(("config", "seed", "alarms", "seconds"), default_rows),
        "",
        "## Messages",
        "",
    ]
    for row in rows:
        for result in row["seeds"]:
            if result["message"]:
                lines.append(f"- {row['name']}, seed {result['seed']}: {result['message']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--only", nargs="+", help="rows whose name contains one of these words (default: all)"
    )
    parser.add_argument("--no-defaults", action="store_true", help="skip the four defaults")
    parser.add_argument(
        "--defaults",
        nargs="+",
        choices=[os.path.basename(spec)[: -len(".py")] for spec in DEFAULT_CONFIGS],
        help="run only these tasks' defaults (default: all four)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in --run-dir")
    parser.add_argument(
        "--run-dir", default=str(benchmarks.RESULTS_DIR / "zoo-runs"), help="where runs go"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.run_dir, exist_ok=True)
    selected = [row for row in ZOO if not args.only or any(word in row.name for word in args.only)]
    runs: dict[tuple[str, int], RunRecord] = {}

    def record(spec: str, seed: int) -> RunRecord:
        if (spec, seed) not in runs:
            runs[spec, seed] = train(spec, seed, args.run_dir, args.reuse)
        return runs[spec, seed]

    rows = []
    for row in selected:
        if row.missing:
            seeds = []
        else:
            seeds = [judge(row, record(row.failure, s), record(row.twin, s)) for s in args.seeds]
        rows.append(
            {
                "name": row.name,
                "seed_file": row.seed,
                "failure": row.failure,
                "twin": row.twin,
                "guards": list(row.guards),
                "criterion": row.criterion,
                "missing": row.missing,
                "seeds": seeds,
            }
        )
    defaults = []
    for spec in () if args.no_defaults else DEFAULT_CONFIGS:
        if args.defaults and os.path.basename(spec)[: -len(".py")] not in args.defaults:
            continue
        for seed in args.seeds:
            run = record(spec, seed)
            alarm_list = [f"{e['guard']} {e['level']} @ {e['epoch']}" for e in alarms(run)]
            defaults.append(
                {"spec": spec, "seed": seed, "alarms": alarm_list, "seconds": run.seconds}
            )
    info = benchmarks.environment(benchmarks.tune_host_allocator())
    markdown = report(rows, defaults, info)
    payload = {"environment": info, "rows": rows, "defaults": defaults}
    json_path, markdown_path = benchmarks.write_results("zoo", payload, markdown)
    print(markdown)
    print(f"\nwritten: {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
