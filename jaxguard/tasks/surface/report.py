"""What the surface task prints and writes: start-up and report lines, tables, audit, figures.

The start-up lines quote the training patches' foreground fraction and the focal settings
next to the seed's figures, and the all-foreground dice every model has to beat; the report
adds the test figures (the harness writes the shared best-epoch and stop lines). The slice
overlays (each evaluation and at the end) and the per-volume dice (from `volume_metrics.json`,
which `export` writes) are drawn with `jaxguard.figures`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure
from ml_collections import ConfigDict
from scipy import special

from jaxguard import figures
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.surface.loss import focal_settings
from jaxguard.tasks.surface.metrics import THRESHOLD, all_foreground_dice
from jaxguard.tasks.surface.splits import foreground_prior

# The seed's figures, quoted next to ours in the startup lines.
SEED_FOREGROUND = (0.66, 0.27, 0.92)  # mean, lowest, highest per-sample foreground fraction
SEED_CLASS_WEIGHTS = (1.94, 0.52)  # (background, foreground) as configured in the seed


def startup_lines(config: ConfigDict, splits) -> list[str]:
    """The class balance, the focal settings it implies and the all-foreground baseline."""
    fractions = splits["train"]["labels"].mean(axis=(1, 2, 3))
    prior = foreground_prior(splits)
    alpha, weights = focal_settings(config, splits)
    seed_mean, seed_low, seed_high = SEED_FOREGROUND
    lines = [
        f"train patches: {len(fractions)} of {config.data.patch_size}^3 voxels, foreground "
        f"fraction {prior:.3f} (per patch {fractions.min():.2f}-{fractions.max():.2f}; the seed "
        f"reported {seed_mean:.2f}, {seed_low:.2f}-{seed_high:.2f})",
        f"focal alpha {alpha:.3f}"
        + (" (1 - train foreground fraction)" if config.loss.focal_alpha is None else "")
        + f": foreground voxels weigh {alpha:.3f}, background {1 - alpha:.3f}",
    ]
    background_focal = 1.0 - alpha
    foreground_focal = alpha
    if weights is None:
        lines.append("class weights: off (loss.use_class_weights = False)")
    else:
        seed_bg, seed_fg = SEED_CLASS_WEIGHTS
        lines.append(
            f"class weights (background, foreground) = ({weights[0]:.3f}, {weights[1]:.3f}) "
            f"from train frequencies ({1 - prior:.3f}, {prior:.3f}), ratio "
            f"{weights[0] / weights[1]:.2f}; applied per voxel to the focal term (the seed's "
            f"({seed_bg}, {seed_fg}) has ratio {seed_bg / seed_fg:.2f}, the square of its "
            "class ratio)"
        )
        background_focal *= float(weights[0])
        foreground_focal *= float(weights[1])
    lines.append(
        f"focal weight per voxel: background {background_focal:.3f}, foreground "
        f"{foreground_focal:.3f} (ratio {background_focal / max(foreground_focal, 1e-12):.2f})"
    )
    if weights is not None and alpha != 0.5:
        lines.append(
            "warning: alpha and the class weights both re-weight the classes, so their effects "
            "multiply; set loss.focal_alpha = 0.5 or loss.use_class_weights = False to apply "
            "one of them"
        )
    lines.append(
        f"all-foreground baseline: dice {all_foreground_dice(splits['val']['labels']):.3f} on "
        f"val, {all_foreground_dice(splits['test']['labels']):.3f} on test"
    )
    return lines


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    """Logits and probabilities of a batch, for TensorBoard."""
    del batch
    logits = np.asarray(outputs["logits"]).ravel()
    return {"logits": logits, "probabilities": special.expit(logits)}


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    """Per test patch: true and predicted foreground fractions and the patch's dice."""
    del batch
    predicted = special.expit(np.asarray(outputs["logits"])) > THRESHOLD
    truth = np.asarray(outputs["labels"]) >= 0.5
    axes = (1, 2, 3)
    overlap = np.sum(predicted & truth, axis=axes)
    total = np.sum(predicted, axis=axes) + np.sum(truth, axis=axes)
    # Both masks empty: perfect agreement, as in SegmentationMetrics.
    dice = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)
    return {
        "fg_fraction_true": truth.mean(axis=axes),
        "fg_fraction_pred": predicted.mean(axis=axes),
        "dice": dice,
    }


def report_lines(config: ConfigDict, splits, summary: RunSummary) -> list[str]:
    """The run, the data and the test figures next to the all-foreground baseline."""
    test = summary.test
    baseline = all_foreground_dice(splits["test"]["labels"])
    source = config.data.source or "embedded volumes"
    return [
        f"surface segmentation, config {config.task} (seed {config.seed}), workdir "
        f"{summary.workdir}",
        f"data: {source}; test split: {len(splits['test']['labels'])} tiles of "
        f"{config.data.patch_size}^3 voxels",
        f"test dice {test['dice']:.4f} (all-foreground baseline {baseline:.4f}), iou "
        f"{test['iou']:.4f}, precision {test['precision']:.4f}, recall {test['recall']:.4f}",
        f"foreground fraction predicted {test['fg_fraction_pred']:.4f} vs true "
        f"{test['fg_fraction_true']:.4f}; clDice {test['cldice']:.4f} (mean over tiles)",
    ]


def audit(config: ConfigDict, splits) -> dict[str, Any]:
    """Foreground balance of every split and the focal settings it implies (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures: `patches`,
      `fg_fraction` (papyrus share of all voxels), the per-patch papyrus share's `min`,
      `q05`, `median`, `q95` and `max`, `empty_patches` and `full_patches` (no / only
      papyrus), and `all_foreground_dice` = `2 f / (1 + f)`, the dice of predicting
      papyrus everywhere (the majority-class baseline the seed's plateau sat near).
    """
    result: dict[str, Any] = {}
    for name, split in splits.items():
        labels = np.asarray(split["labels"]) >= 0.5
        per_patch = labels.reshape(len(labels), -1).mean(axis=1)
        fraction = float(labels.mean())
        q05, median, q95 = np.quantile(per_patch, [0.05, 0.5, 0.95])
        result[name] = {
            "patches": len(labels),
            "fg_fraction": fraction,
            "min": float(per_patch.min()),
            "q05": float(q05),
            "median": float(median),
            "q95": float(q95),
            "max": float(per_patch.max()),
            "empty_patches": int(np.sum(per_patch == 0)),
            "full_patches": int(np.sum(per_patch == 1)),
            "all_foreground_dice": 2 * fraction / (1 + fraction),
        }
    train = result["train"]
    advice = [
        f"train: {train['fg_fraction']:.1%} papyrus; predicting papyrus everywhere scores dice "
        f"{train['all_foreground_dice']:.3f} on it, so a dice near that is the majority class, "
        "not a model"
    ]
    if 0 < train["fg_fraction"] < 1:
        alpha, weights = focal_settings(config, splits)
        source = "from the data" if config.loss.focal_alpha is None else "loss.focal_alpha"
        advice.append(f"focal alpha {alpha:.3f} ({source}: 1 - the train papyrus share)")
        if weights is None:
            advice.append("class weights off (loss.use_class_weights=False)")
        else:
            advice.append(
                f"class weights w_c = 1 / (K f_c): background {weights[0]:.3f}, papyrus "
                f"{weights[1]:.3f} (loss.use_class_weights=False turns them off)"
            )
    else:
        advice.append(
            "train holds one class only: the loss cannot learn a boundary; change "
            "data.foreground_centre_prob or the data"
        )
    for name in ("val", "test"):
        if name in result and abs(result[name]["fg_fraction"] - train["fg_fraction"]) > 0.15:
            advice.append(
                f"{name} is {result[name]['fg_fraction']:.1%} papyrus against train's "
                f"{train['fg_fraction']:.1%}: the patch sampler (data.foreground_centre_prob) "
                "shifts the balance the loss sees"
            )
    result["recommendations"] = advice
    return result


# ----------------------------------------------------------------------------- figures

OVERLAY_PATCHES = 3  # Patches drawn in a slice overlay.
# Error categories of a voxel: (label, colour), indexed by 2 * truth + prediction.
ERROR_CATEGORIES = (
    ("true background", "white"),
    ("false papyrus", "tab:red"),
    ("missed papyrus", "tab:blue"),
    ("true papyrus", "0.75"),
)


def boundary_patches(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` patches whose foreground fraction is closest to 1/2.

    Args:
      labels: `[N, P, P, P]` true masks. Half-filled patches show the most surface boundary.
    """
    fractions = np.asarray(labels, np.float64).reshape(len(labels), -1).mean(axis=1)
    return np.argsort(np.abs(fractions - 0.5), kind="stable")[:count]


def slice_overlays(
    volume: np.ndarray, labels: np.ndarray, logits: np.ndarray, *, title: str
) -> Figure:
    """Middle depth slice of a few patches: image, truth, predicted probability and errors.

    Args:
      volume: `[K, P, P, P]` CT intensities.
      labels: `[K, P, P, P]` true papyrus masks (0/1).
      logits: `[K, P, P, P]` predicted logits.
      title: the figure title.
    """
    middle = volume.shape[1] // 2
    image, truth = np.asarray(volume)[:, middle], np.asarray(labels)[:, middle] >= 0.5
    prob = special.expit(np.asarray(logits, np.float64)[:, middle])
    figure, axes = figures.image_grid(len(image), 4, tile=1.6, extra_height=1.3)
    intensity = colors.Normalize(*figures.finite_range(image, floor=1e-6))
    unit = colors.Normalize(0.0, 1.0)
    category = colors.ListedColormap([c for _, c in ERROR_CATEGORIES])
    for k in range(len(image)):
        grey = figures.show_field(axes[k, 0], image[k], cmap="gray", norm=intensity)
        mask = figures.show_field(axes[k, 1], truth[k], cmap="Greens", norm=unit)
        shown = figures.show_field(axes[k, 2], prob[k], cmap="magma", norm=unit)
        errors = 2 * truth[k] + (prob[k] > THRESHOLD)
        axes[k, 3].imshow(errors, cmap=category, vmin=-0.5, vmax=3.5, interpolation="nearest")
        axes[k, 0].set_ylabel(f"patch, slice {middle}", fontsize="small")
    for ax, name in zip(axes[0], ("image", "truth", "predicted", "error"), strict=True):
        ax.set_title(name, fontsize="small")
    figures.shared_colorbar(figure, grey, axes[:, 0], "CT intensity (input units)")
    figures.shared_colorbar(figure, mask, axes[:, 1], "papyrus (0 / 1)")
    figures.shared_colorbar(figure, shown, axes[:, 2], "papyrus probability")
    figures.category_legend(
        axes[-1, 3], dict(ERROR_CATEGORIES), loc="upper center", bbox_to_anchor=(0.5, -0.05)
    )
    figure.suptitle(title)
    return figure


def images(outputs, batch) -> dict[str, np.ndarray]:
    """TensorBoard, each evaluation: slice overlays of the most boundary-rich validation patches."""
    chosen = boundary_patches(np.asarray(batch["labels"]), OVERLAY_PATCHES)
    figure = slice_overlays(
        np.asarray(batch["volume"])[chosen],
        np.asarray(batch["labels"])[chosen],
        np.asarray(outputs["logits"])[chosen],
        title="validation patches",
    )
    return {"val/slices": figures.to_rgb(figure)}


def run_figures(config: ConfigDict, splits, summary: RunSummary, outputs, batch) -> dict:
    """Test slice overlays, and per-volume dice against the all-foreground baseline.

    The dice figure reads `volume_metrics.json`, written by `export` before the figures.
    """
    del config, splits
    chosen = boundary_patches(np.asarray(batch["labels"]), OVERLAY_PATCHES)
    drawn = {
        "slices": slice_overlays(
            np.asarray(batch["volume"])[chosen],
            np.asarray(batch["labels"])[chosen],
            np.asarray(outputs["logits"])[chosen],
            title="test patches, middle slice",
        )
    }
    path = os.path.join(summary.workdir, "volume_metrics.json")
    if os.path.exists(path):
        with open(path) as f:
            volumes = json.load(f)["volumes"]
        drawn["volume_dice"] = figures.bars(
            [f"volume {i}" for i in range(len(volumes))],
            {
                "model": [v["dice"] for v in volumes],
                "all foreground": [v["all_foreground_dice"] for v in volumes],
                "model clDice": [v["cldice"] for v in volumes],
            },
            ylabel="dice (0 to 1)",
            title="test volumes: sliding-window masks",
            ylim=(0.0, 1.0),
        )
    return drawn
