"""What a run leaves in its directory besides checkpoints and TensorBoard: files and lines.

`log.csv` rows are appended per epoch by `writers.CsvWriter`; this module trims them on resume,
writes the end-of-run files (`test_metrics.json`, `predictions.csv`, `report.txt`), the collapse
dump, the report lines every task shares, the learning-curve figure every run gets (from
`log.csv` and `guard_events.jsonl`) and the metrics the HParams dashboard ranks runs by.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from jaxguard import figures
from jaxguard.guards import GuardEvent, MonitorExpression, collapse_diagnostics
from jaxguard.tasks.contract import RunSummary


def is_number(value) -> bool:
    return isinstance(value, int | float | np.floating | np.integer)


def numbers_only(values: Mapping[str, object]) -> dict[str, float]:
    """The numeric entries of `values` as Python floats (arrays such as histograms dropped)."""
    return {key: float(value) for key, value in values.items() if is_number(value)}


def json_metrics(values: Mapping[str, object]) -> dict[str, float | list[float]]:
    """Numbers as floats and arrays (a rank histogram, reliability bins) as lists of floats."""
    result: dict[str, float | list[float]] = {}
    for key, value in values.items():
        if is_number(value):
            result[key] = float(value)
        elif isinstance(value, np.ndarray | list | tuple) or hasattr(value, "__array__"):
            result[key] = [float(v) for v in np.ravel(np.asarray(value))]
    return result


def relative_change(values: list[float]) -> float:
    """`(v[-1] - v[-2]) / |v[-2]|`, NaN with fewer than two values or a zero before.

    Logged as `val/loss_change` each epoch: seed 002's volatile validation loss shows here.
    """
    if len(values) < 2 or not values[-2]:
        return math.nan
    return (values[-1] - values[-2]) / abs(values[-2])


def shared_report_lines(summary: RunSummary) -> list[str]:
    """The report lines of every run: which weights were tested, why the run ended, how long."""
    chosen = f" (by {summary.best_monitor})" if summary.best_monitor else " (the last epoch)"
    lines = [
        f"best epoch {summary.best_epoch} of {summary.epochs_run} run{chosen}, "
        f"{summary.train_seconds:.0f} s of training",
        "stopped by: " + (summary.stopped_by.message if summary.stopped_by else "the epoch budget"),
    ]
    return lines


def truncate_csv(path: str, *, last_epoch: int) -> None:
    """Drops rows written after the checkpoint a resumed run restarts from.

    A row a crash cut short (no epoch, or a file without a header) is dropped too; a file
    left without a readable header is removed, and the resumed run writes it anew.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:  # Keeps the csv module's \r\n line ends as they are.
        lines = f.readlines()
    header = lines[0].rstrip("\r\n").split(",") if lines and lines[0].endswith("\n") else []
    if "epoch" not in header:
        os.remove(path)
        return
    epoch_col = header.index("epoch")
    kept = [lines[0]] + [
        line
        for line in lines[1:]
        if line.endswith("\n") and _row_epoch(line, epoch_col) <= last_epoch
    ]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.writelines(kept)
    os.replace(tmp, path)  # Atomic: a crash here leaves the old log, never half of it.


def _row_epoch(line: str, column: int) -> float:
    """The epoch of a CSV row; infinity when the row holds none (cut short by a crash)."""
    try:
        return float(line.split(",")[column])
    except (IndexError, ValueError):
        return math.inf


EVENTS_FILE = "guard_events.jsonl"


def append_event(workdir: str, event: GuardEvent, step: int) -> None:
    """Appends one guard event to `guard_events.jsonl`: guard, level, message, epoch, step.

    `step` is the training step at which the event was raised (the event's own when it has
    one). Benchmarks and tools read the file to tell which guard fired when.
    """
    record = dataclasses.asdict(event)
    record["step"] = event.step if event.step is not None else step
    with open(os.path.join(workdir, EVENTS_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_events(workdir: str) -> list[dict]:
    """The records `append_event` wrote, oldest first; [] when there are none."""
    path = os.path.join(workdir, EVENTS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [record for line in f if (record := _event_record(line)) is not None]


def _event_record(line: str) -> dict | None:
    """One line of `guard_events.jsonl`, or None for a blank line or one a crash cut short."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def truncate_events(workdir: str, *, last_step: int) -> None:
    """Drops events raised after the checkpoint a resumed run restarts from (step > last_step)."""
    kept = [record for record in read_events(workdir) if record["step"] <= last_step]
    path = os.path.join(workdir, EVENTS_FILE)
    if not os.path.exists(path):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in kept)
    os.replace(tmp, path)  # Atomic, as for the CSV.


def dump_collapse(workdir: str, pred: np.ndarray, target: np.ndarray, event: GuardEvent) -> str:
    """Writes `collapse_diagnostics.json` (figures and the guard's message); returns its path."""
    figures = collapse_diagnostics(pred, target)
    figures["message"] = event.message
    path = os.path.join(workdir, "collapse_diagnostics.json")
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)
    return path


def write_outputs(
    workdir: str, summary: RunSummary, table: Mapping[str, np.ndarray], report: list[str]
) -> None:
    """`test_metrics.json` (the summary), `predictions.csv` (the table) and `report.txt`."""
    with open(os.path.join(workdir, "test_metrics.json"), "w") as f:
        json.dump(summary.as_dict(), f, indent=2, default=float)
    columns = list(table)
    rows = np.stack([np.asarray(table[c], np.float64) for c in columns], axis=1)
    np.savetxt(
        os.path.join(workdir, "predictions.csv"),
        rows,
        delimiter=",",
        header=",".join(columns),
        comments="",
        fmt="%.6g",
    )
    with open(os.path.join(workdir, "report.txt"), "w") as f:
        f.write("\n".join(report) + "\n")


def read_log(workdir: str) -> list[dict[str, float]]:
    """The rows of `log.csv` as floats (NaN for an empty cell); [] without the file."""
    path = os.path.join(workdir, "log.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{key: figures.as_float(value) for key, value in row.items() if key} for row in rows]


def monitor_values(rows: list[dict[str, float]], monitor: str) -> np.ndarray:
    """`[len(rows)]` values of a monitor expression on each `log.csv` row (NaN where unreadable).

    The expression reads unprefixed validation metrics and `train_loss`, as the guards do.
    """
    expression = MonitorExpression(monitor)
    values = []
    for row in rows:
        metrics = {key.removeprefix("val_"): value for key, value in row.items()}
        try:
            values.append(expression.evaluate(metrics))
        except KeyError:
            values.append(math.nan)
    return np.asarray(values, np.float64)


def learning_curve_figure(summary: RunSummary) -> Figure:
    """Train and validation loss, the monitored metric and the guard events of a run, per epoch.

    Read from `log.csv` and `guard_events.jsonl` in `summary.workdir`; each loss term's
    training mean (`train_<term>`) and validation columns ending in `loss` (a task's own
    loss terms, e.g. the cVAE's `val_rec_loss`) are drawn too.
    """
    rows = read_log(summary.workdir)
    columns = rows[0] if rows else {}
    terms = sorted(
        key
        for key in columns
        if (key.startswith("train_") and key != "train_loss")
        or (key.startswith("val_") and key.endswith("loss") and key != "val_loss")
    )
    monitor = summary.best_monitor
    return figures.learning_curves(
        rows,
        read_events(summary.workdir),
        steps_per_epoch=summary.steps_per_epoch,
        monitor=monitor,
        monitor_values=monitor_values(rows, monitor) if monitor else None,
        loss_terms=terms,
        title=f"{summary.task}: learning curves (best epoch {summary.best_epoch})",
    )


def hparam_metrics(summary: RunSummary) -> dict[str, float]:
    """What the HParams dashboard ranks runs by: best-epoch validation and test metrics.

    Returns:
      `best/val_<metric>` (the history record of `summary.best_epoch`), `test/<metric>` (the
      numeric test metrics) and `param_count`.
    """
    best = next((r for r in summary.history if r.get("epoch") == summary.best_epoch), {})
    metrics = {f"best/{key}": float(v) for key, v in best.items() if key.startswith("val_")}
    metrics.update({f"test/{key}": v for key, v in numbers_only(summary.test).items()})
    metrics["param_count"] = float(summary.param_count)
    return metrics
