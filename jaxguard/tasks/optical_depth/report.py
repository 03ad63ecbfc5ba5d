"""What the optical-depth task prints and writes: start-up, report, tables, audit, figures."""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from jaxguard import figures
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.optical_depth import data as data_lib


def startup_lines(config: ConfigDict, splits) -> list[str]:
    target = splits["train"]["target"]
    line = (
        f"train targets: mean {target.mean():.3f}, std {target.std():.3f}, range "
        f"[{target.min():.2f}, {target.max():.2f}]"
    )
    if "oracle" in splits["test"]:  # The generator's; user data (data.source) have none.
        line += f"; oracle R² on test {data_lib.oracle_r2(splits['test']):.3f}"
    return [line]


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    return {"predictions": np.asarray(outputs["pred"]), "targets": np.asarray(batch["target"])}


def collapse_arrays(outputs, batch) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(outputs["pred"]), np.asarray(batch["target"])


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    table = {"true": batch["target"], "predicted": outputs["pred"]}
    if "oracle" in batch:  # The generator's; user data (data.source) have none.
        table["oracle"] = batch["oracle"]
    return table


def report_lines(config: ConfigDict, splits, summary: RunSummary) -> list[str]:
    test = summary.test
    r2 = f"R² {test['r2']:.4f}"
    if "oracle" in splits["test"]:  # The generator's; user data (data.source) have none.
        oracle = data_lib.oracle_r2(splits["test"])
        r2 += f" (oracle {oracle:.4f}, {test['r2'] / oracle:.1%} of it)"
    return [
        f"optical depth, config {config.task} (seed {config.seed}), workdir {summary.workdir}",
        f"test split: {len(splits['test']['target'])} sequences of {config.data.frames} frames",
        r2,
        f"MAE {test['mae']:.4f}  RMSE {test['rmse']:.4f}  MAPE {test['mape']:.1%}",
        f"pred std {test['pred_std']:.4f} vs target std {test['target_std']:.4f} "
        f"(std ratio {test['std_ratio']:.3f}, variance ratio {test['variance_ratio']:.3f})",
        f"pred spread {test['spread']:.4f} vs target spread {test['target_spread']:.4f}",
    ]


def audit(config: ConfigDict, splits) -> dict:
    """Target distribution per split, and the loss weight high targets get (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures: `count`, `mean`, `std`
      and `skew` (population moments, ddof 0, as `scipy.stats.skew`), `min`, quantiles
      `q05` `q25` `median` `q75` `q95`, `max`, `above_threshold` (fraction of targets above
      `loss.overweight_threshold`) and `at_ceiling` (fraction at the generator's clip value
      `data.TARGET_MAX`).
    """
    threshold, factor = config.loss.overweight_threshold, config.loss.overweight_factor
    result: dict = {}
    for name, split in splits.items():
        target = np.asarray(split["target"], np.float64)
        centred = target - target.mean()
        std = float(np.sqrt(np.mean(centred**2)))
        # A constant target has no skew: 0/0 is reported as NaN, not raised.
        skew = float(np.mean(centred**3) / std**3) if std > 0 else float("nan")
        q05, q25, median, q75, q95 = np.quantile(target, [0.05, 0.25, 0.5, 0.75, 0.95])
        result[name] = {
            "count": int(target.size),
            "mean": float(target.mean()),
            "std": std,
            "skew": skew,
            "min": float(target.min()),
            "q05": float(q05),
            "q25": float(q25),
            "median": float(median),
            "q75": float(q75),
            "q95": float(q95),
            "max": float(target.max()),
            "above_threshold": float(np.mean(target > threshold)),
            "at_ceiling": float(np.mean(target >= data_lib.TARGET_MAX)),
        }
    train = result["train"]
    high = train["above_threshold"]
    share = factor * high / (factor * high + 1.0 - high) if high > 0 else 0.0
    advice = [
        f"train: {high:.1%} of targets lie above loss.overweight_threshold={threshold:g}; with "
        f"loss.overweight_factor={factor:g} they carry {share:.1%} of the base loss weight"
        + (
            f" (a factor of {(1.0 - high) / high:.3g} would give them half)" if 0 < high < 1 else ""
        ),
        f"train: skew {train['skew']:.2f}, mean {train['mean']:.3f} vs median "
        f"{train['median']:.3f}; {train['at_ceiling']:.1%} of targets sit at the clip value "
        f"{data_lib.TARGET_MAX:g}",
    ]
    result["recommendations"] = advice
    return result


# ----------------------------------------------------------------------------- figures

QUANTITY, UNITS = "optical depth", "dimensionless"


def images(outputs, batch) -> dict[str, np.ndarray]:
    """TensorBoard, each evaluation: validation predictions against the truth."""
    figure = figures.pred_vs_true(
        np.asarray(outputs["pred"]),
        np.asarray(batch["target"]),
        quantity=QUANTITY,
        units=UNITS,
        title="validation: predicted vs true",
    )
    return {"val/pred_vs_true": figures.to_rgb(figure)}


def run_figures(config: ConfigDict, splits, summary: RunSummary, outputs, batch) -> dict:
    """Test predictions against the truth (scatter, histograms) and the std ratio per epoch.

    A collapsed model (seed 000) shows as a flat scatter, a narrow prediction histogram
    and a std ratio far below 1.
    """
    del config, splits
    pred, true = np.asarray(outputs["pred"]), np.asarray(batch["target"])
    return {
        "pred_vs_true": figures.pred_vs_true(
            pred, true, quantity=QUANTITY, units=UNITS, title="test: predicted vs true"
        ),
        "histograms": figures.value_histograms(
            pred, true, quantity=QUANTITY, units=UNITS, title="test: predictions and truths"
        ),
        "std_ratio": figures.epoch_curves(
            summary.history,
            {"prediction std / target std": "val_std_ratio"},
            ylabel="std ratio (dimensionless)",
            title="validation std ratio (collapse drives it to 0)",
            reference=1.0,
        ),
    }
