"""Side-by-side table of finished runs: `python -m jaxguard.compare RUN_DIR... [--markdown OUT]`.

Reads each run's `test_metrics.json` and prints one row per run with R², MAE,
RMSE, prediction std, spread and std ratio (or the metrics named by
`--metrics`), marking the best run in each column with `*`. "Best" is the
highest R², the lowest MAE and RMSE, and for the spread figures the one closest
to the truth (std ratio closest to 1, pred std closest to the target std).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

DEFAULT_METRICS = ("r2", "mae", "rmse", "pred_std", "spread", "std_ratio")
LABELS = {
    "r2": "R²",
    "mae": "MAE",
    "rmse": "RMSE",
    "pred_std": "pred std",
    "spread": "spread",
    "std_ratio": "std ratio",
}
# How far a value is from ideal, given the run's metrics; the smallest wins.
_DISTANCE_TO_IDEAL = {
    "r2": lambda m: -m["r2"],
    "std_ratio": lambda m: abs(m["std_ratio"] - 1.0),
    "pred_std": lambda m: abs(m["pred_std"] - m.get("target_std", math.nan)),
    "spread": lambda m: abs(m["spread"] - m.get("target_spread", math.nan)),
}


def load_run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "test_metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir}: no test_metrics.json (did the run finish?)")
    with open(path) as f:
        return json.load(f)["test"]


def best_runs(runs: dict[str, dict], metric: str) -> set[str]:
    """Names of the runs that are best on `metric` (ties share the mark)."""
    distance = _DISTANCE_TO_IDEAL.get(metric, lambda m: m[metric])
    scores = {}
    for name, metrics in runs.items():
        value = distance(metrics) if metric in metrics else math.nan
        if not math.isnan(value):
            scores[name] = value
    if not scores:
        return set()
    best = min(scores.values())
    return {name for name, value in scores.items() if value == best}


def table(runs: dict[str, dict], metrics: Sequence[str]) -> list[list[str]]:
    """Rows of strings, header first; the best value in a column carries a `*`."""
    marks = {metric: best_runs(runs, metric) for metric in metrics}
    rows = [["run", *(LABELS.get(m, m) for m in metrics)]]
    for name, values in runs.items():
        cells = [name]
        for metric in metrics:
            value = values.get(metric, math.nan)
            cells.append(f"{value:.4g}" + ("*" if name in marks[metric] else ""))
        rows.append(cells)
    return rows


def to_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def to_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxguard.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated test metric keys (default: %(default)s)",
    )
    parser.add_argument("--markdown", metavar="OUT", help="also write the table as Markdown to OUT")
    args = parser.parse_args(argv)
    try:
        runs = {os.path.basename(os.path.normpath(d)) or d: load_run(d) for d in args.runs}
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = table(runs, [m for m in args.metrics.split(",") if m])
    print(to_text(rows))
    print("* best run in the column")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
