"""Side-by-side table of finished runs: `python -m jaxguard.compare RUN_DIR... [--markdown OUT]`.

Reads each run's `test_metrics.json` and prints one row per run with R², MAE,
RMSE, prediction std, spread and std ratio (or the metrics named by
`--metrics`; runs without those, such as segmentation or pointing runs, get every
numeric metric they report), marking the best run in each column with `*`.
"Best" is the highest for scores (R², Pearson, dice, IoU, precision, recall, F1,
clDice, active latent units), the lowest for errors and losses, and for figures
with a true counterpart the one closest to the truth (std ratio closest to 1,
pred std closest to the target std, predicted foreground fraction or component
count closest to the true one). A column whose direction jaxguard does not know
is left unmarked rather than guessed.
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
_HIGHER_IS_BETTER = {
    "r2", "pearson", "correlation", "dice", "iou", "precision", "recall", "cldice",
    "cldice_mean", "done_f1", "done_precision", "done_recall", "active_units",
}  # fmt: skip
_LOWER_IS_BETTER = {"mae", "rmse", "mse", "mape", "loss", "nonfinite"}
_LOWER_IS_BETTER_SUFFIXES = ("_mae", "_rmse", "_mse", "_loss", "_tail", "_all")
_LOWER_IS_BETTER_PREFIXES = ("mae_", "rmse_", "pixel_error_")
# Predicted figure -> its true counterpart: the closest wins.
_TRUE_COUNTERPART = {
    "pred_std": "target_std",
    "spread": "target_spread",
    "fg_fraction_pred": "fg_fraction_true",
    "extreme_freq_pred": "extreme_freq_true",
    "components_pred": "components_true",
    "done_positive_rate": "done_true_rate",
}
_IDEAL_VALUE = {"std_ratio": 1.0, "variance_ratio": 1.0, "bias": 0.0}


def _distance_to_ideal(metric: str):
    """`metrics -> how far the run is from ideal on metric` (smallest wins), or None if unknown."""
    if metric in _HIGHER_IS_BETTER:
        return lambda m: -m[metric]
    if metric in _IDEAL_VALUE:
        return lambda m: abs(m[metric] - _IDEAL_VALUE[metric])
    if metric in _TRUE_COUNTERPART:
        return lambda m: abs(m[metric] - m.get(_TRUE_COUNTERPART[metric], math.nan))
    if (
        metric in _LOWER_IS_BETTER
        or metric.endswith(_LOWER_IS_BETTER_SUFFIXES)
        or metric.startswith(_LOWER_IS_BETTER_PREFIXES)
    ):
        return lambda m: m[metric]
    return None


def load_run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "test_metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir}: no test_metrics.json (did the run finish?)")
    with open(path) as f:
        return json.load(f)["test"]


def best_runs(runs: dict[str, dict], metric: str) -> set[str]:
    """Names of the runs that are best on `metric` (ties share the mark; none if unknown)."""
    distance = _distance_to_ideal(metric)
    if distance is None:
        return set()
    scores = {}
    for name, metrics in runs.items():
        value = distance(metrics) if _is_number(metrics.get(metric)) else math.nan
        if not math.isnan(value):
            scores[name] = value
    if not scores:
        return set()
    best = min(scores.values())
    return {name for name, value in scores.items() if value == best}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def default_metrics(runs: dict[str, dict]) -> list[str]:
    """`DEFAULT_METRICS` that some run reports, else every numeric metric of the runs."""
    present = [m for m in DEFAULT_METRICS if any(m in metrics for metrics in runs.values())]
    if present:
        return present
    return sorted({k for metrics in runs.values() for k, v in metrics.items() if _is_number(v)})


def table(runs: dict[str, dict], metrics: Sequence[str]) -> list[list[str]]:
    """Rows of strings, header first; the best value in a column carries a `*`."""
    marks = {metric: best_runs(runs, metric) for metric in metrics}
    rows = [["run", *(LABELS.get(m, m) for m in metrics)]]
    for name, values in runs.items():
        cells = [name]
        for metric in metrics:
            value = values.get(metric)
            text = f"{value:.4g}" if _is_number(value) else "-"
            cells.append(text + ("*" if name in marks[metric] else ""))
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
        help=f"comma-separated test metric keys (default: {','.join(DEFAULT_METRICS)}, or "
        "every numeric metric for runs that report none of those)",
    )
    parser.add_argument("--markdown", metavar="OUT", help="also write the table as Markdown to OUT")
    args = parser.parse_args(argv)
    try:
        runs = {os.path.basename(os.path.normpath(d)) or d: load_run(d) for d in args.runs}
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else default_metrics(runs)
    rows = table(runs, metrics)
    print(to_text(rows))
    print("* best run in the column (columns of unknown direction are not marked)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
