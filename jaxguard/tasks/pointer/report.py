"""What the pointer task prints and writes: start-up and report lines, tables, pictures, audit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxguard import figures, losses
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.pointer import coords, data, render
from jaxguard.tasks.pointer.loss import distance_threshold, done_pos_weight
from jaxguard.tasks.pointer.model import HEADS

NUM_IMAGES = 4  # Validation examples drawn for TensorBoard each epoch (the first ones).


def done_counts(split) -> tuple[int, int]:
    """`(done examples, examples)` of a split."""
    done = np.asarray(split["done"]) >= 0.5
    return int(done.sum()), int(done.size)


def _pixel_errors(outputs, batch) -> np.ndarray:
    """`[N]` pixel error of every example, NaN for final steps."""
    return coords.pixel_error(outputs["xy"], batch["target_xy"], batch["image"].shape[1:3])


# ----------------------------------------------------------------------------- start-up, report


def startup_lines(config: ConfigDict, splits) -> list[str]:
    height, width = splits["train"]["image"].shape[1:3]
    threshold, pixels = distance_threshold(config)
    pos_weight, origin = done_pos_weight(config, splits)
    counts = splits["train"]["num_objects"]
    rates = []
    for name in data.SPLITS:
        positives, total = done_counts(splits[name])
        rates.append(f"{name} {positives / total:.1%} ({positives} of {total})")
    lines = [
        f"images {width} x {height} px (model works at {config.model.work_size} x "
        f"{config.model.work_size}); objects per training image: mean {counts.mean():.1f}, "
        f"range {counts.min()}-{counts.max()}",
        f"distance threshold {threshold:.4g} normalised (of the longer side) = {pixels:.1f} px "
        f"on {width} x {height} images; {config.loss.norm.upper()} distance, "
        f"{config.loss.spatial} loss",
        f"done rate: {', '.join(rates)}; pos_weight {pos_weight:.3g} ({origin}), done_weight "
        f"{config.loss.done_weight:g}",
    ]
    band = config.guard.head_gradient_band
    if band.enabled:
        lines.append(
            f"first-epoch head gradient band {tuple(band.band)} (heads {', '.join(HEADS)})"
        )
    if done_counts(splits["val"])[0] == 0:
        lines.append(
            "warning: the validation split has no done examples, so done recall and the "
            "done_never_predicted guard cannot see the done head"
        )
    return lines


def report_lines(config: ConfigDict, splits, summary: RunSummary) -> list[str]:
    test = summary.test
    positives, total = done_counts(splits["test"])
    height, width = splits["test"]["image"].shape[1:3]
    source = config.data.source or "embedded generator"
    return [
        f"pointer, data {source} (seed {config.seed}), workdir {summary.workdir}",
        f"test split: {total} examples on {width} x {height} images, {positives} done",
        f"pixel error on {test['pixel_error_count']:.0f} pointing steps: mean "
        f"{test['pixel_error_mean']:.2f}, median {test['pixel_error_median']:.2f}, p90 "
        f"{test['pixel_error_p90']:.2f} px",
        f"done precision {test['done_precision']:.3f}  recall {test['done_recall']:.3f}  "
        f"F1 {test['done_f1']:.3f}",
        f"done probability mean {test['done_prob_mean']:.3f}, std {test['done_prob_std']:.3f}, "
        f"highest on a done example {test['done_prob_max_positive']:.3f}",
        f"loss: {config.loss.spatial} ({config.loss.norm}) threshold {config.loss.threshold:g} "
        f"{config.loss.threshold_units}, done_weight {config.loss.done_weight:g}, pos_weight "
        f"{config.loss.pos_weight}",
    ]


# ----------------------------------------------------------------------------- tables, pictures


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    done = np.asarray(batch["done"]) >= 0.5
    prob = np.asarray(outputs["done_prob"])
    return {
        "done_prob/done": prob[done],
        "done_prob/not_done": prob[~done],
        "pixel_error": _pixel_errors(outputs, batch)[~done],
        "pred_x": np.asarray(outputs["xy"])[:, 0],
        "pred_y": np.asarray(outputs["xy"])[:, 1],
    }


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    xy, target = np.asarray(outputs["xy"]), np.asarray(batch["target_xy"])
    return {
        "image_id": batch["image_id"],
        "num_objects": batch["num_objects"],
        "num_marked": batch["num_marked"],
        "done_true": batch["done"],
        "done_prob": outputs["done_prob"],
        "true_x": target[:, 0],
        "true_y": target[:, 1],
        "pred_x": xy[:, 0],
        "pred_y": xy[:, 1],
        "pixel_error": _pixel_errors(outputs, batch),
    }


def images(outputs, batch) -> dict[str, np.ndarray]:
    """The first `NUM_IMAGES` validation examples, drawn by `render.overlay_figure`."""
    indices = range(min(NUM_IMAGES, len(batch["done"])))
    figure = render.overlay_figure(outputs, batch, indices, title="validation examples")
    return {"val_examples": figures.to_rgb(figure)}


def run_figures(config: ConfigDict, splits, summary: RunSummary, outputs, batch) -> dict:
    """The first `NUM_IMAGES` test examples with the tested weights (`render.overlay_figure`)."""
    del config, splits, summary
    indices = range(min(NUM_IMAGES, len(batch["done"])))
    return {"test_examples": render.overlay_figure(outputs, batch, indices, title="test examples")}


# ----------------------------------------------------------------------------- audit


def audit(config: ConfigDict, splits) -> dict[str, Any]:
    """Done balance of every split and the `pos_weight` that balances it (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`; figures are `examples`,
      `images`, `done`, `not_done`, `done_rate`, `objects_per_example` and
      `balancing_pos_weight` (`(1 - rate) / rate`, NaN without both classes).
    """
    result: dict[str, Any] = {}
    for name, split in splits.items():
        positives, total = done_counts(split)
        rate = positives / total
        result[name] = {
            "examples": total,
            "images": len(np.unique(split["image_id"])),
            "done": positives,
            "not_done": total - positives,
            "done_rate": rate,
            "objects_per_example": float(np.mean(split["num_objects"])),
            "balancing_pos_weight": losses.pos_weight_from_rate(rate)
            if 0 < positives < total
            else math.nan,
        }
    advice = []
    train = result["train"]
    if 0 < train["done"] < train["examples"]:
        advice.append(
            f"train: {train['done_rate']:.1%} done; a model that never says done is "
            f"{1 - train['done_rate']:.1%} accurate on it. Weight done examples by "
            f"pos_weight = (1 - rate) / rate = {train['balancing_pos_weight']:.3g} "
            "(loss.pos_weight=auto does this)"
        )
    else:
        advice.append(
            f"train has {train['done']} done examples of {train['examples']}: the done head "
            "cannot be balanced; change data.done_fraction"
        )
    setting = config.loss.pos_weight.strip().lower()
    if setting != "auto" and math.isfinite(train["balancing_pos_weight"]):
        advice.append(
            f"loss.pos_weight={config.loss.pos_weight} weights a done example "
            f"{float(setting) / train['balancing_pos_weight']:.2g}x as much as balance needs"
        )
    for name in data.SPLITS[1:]:
        figures = result[name]
        if figures["done"] == 0:
            advice.append(f"{name} has no done examples: done recall and F1 are undefined on it")
        elif figures["done"] < 20:
            advice.append(
                f"{name} has {figures['done']} done examples: done recall moves in steps of "
                f"{1 / figures['done']:.0%}; more examples (data.num_{name}) or a higher "
                "data.done_fraction give steadier figures"
            )
    result["recommendations"] = advice
    return result
