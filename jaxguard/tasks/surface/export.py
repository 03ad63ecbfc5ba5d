"""The surface task's export: sliding-window inference over the full test volumes.

Connected components and whole-volume dice only make sense on whole volumes, and
`scipy.ndimage.label` runs on the host, so they are computed here, from the tested weights,
rather than in the jitted metrics: `export` writes the predicted masks and
`volume_metrics.json` and returns the lines the report adds.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from ml_collections import ConfigDict
from scipy import ndimage

from jaxguard.tasks.surface import inference
from jaxguard.tasks.surface.metrics import THRESHOLD, all_foreground_dice, binary_cldice
from jaxguard.tasks.surface.splits import volumes_for

_binary_cldice = jax.jit(binary_cldice, static_argnames="iterations")


def volume_figures(
    predicted: np.ndarray, truth: np.ndarray, *, iterations: int
) -> dict[str, float]:
    """Whole-volume figures of a binary prediction: dice, clDice and connected components.

    Components are 6-connected (face neighbours), counted by `scipy.ndimage.label`.
    """
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = predicted.sum() + truth.sum()
    cldice = _binary_cldice(
        predicted[None].astype(np.float32), truth[None].astype(np.float32), iterations=iterations
    )
    return {
        "dice": float(2.0 * np.sum(predicted & truth) / total) if total else 1.0,
        "all_foreground_dice": all_foreground_dice(truth),
        "cldice": float(cldice[0]),
        "fg_fraction_pred": float(predicted.mean()),
        "fg_fraction_true": float(truth.mean()),
        "components_pred": int(ndimage.label(predicted)[1]),
        "components_true": int(ndimage.label(truth)[1]),
    }


def export(config: ConfigDict, workdir: str, predict, splits) -> list[str]:
    """Sliding-window inference over the full test volumes; writes the predicted masks.

    Writes `predicted_mask_<i>.npy` (uint8 `[D, H, W]`) for test volume `i` and
    `volume_metrics.json` (per-volume and pooled dice, clDice and component counts).
    """
    del splits
    d = config.data
    pairs = volumes_for(d, config.seed)["test"]

    def predict_patch(patches: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.sigmoid(predict({"volume": patches})["logits"]))

    masks, figures = [], []
    for volume, truth in pairs:
        probs = inference.sliding_window_predict(
            predict_patch,
            volume,
            d.patch_size,
            d.window_overlap,
            d.window_blend,
            batch_size=config.eval.batch_size,
        )
        masks.append((probs > THRESHOLD).astype(np.uint8))
        figures.append(volume_figures(masks[-1], truth, iterations=config.loss.cldice_iterations))
    all_pred = np.concatenate([m.ravel() for m in masks]).astype(bool)
    all_true = np.concatenate([t.ravel() for _, t in pairs]).astype(bool)
    pooled = {
        "dice": float(2.0 * np.sum(all_pred & all_true) / (all_pred.sum() + all_true.sum())),
        "all_foreground_dice": all_foreground_dice(all_true),
        "cldice_mean": float(np.mean([f["cldice"] for f in figures])),
        "components_pred": int(sum(f["components_pred"] for f in figures)),
        "components_true": int(sum(f["components_true"] for f in figures)),
    }
    mask_paths = []
    for index, mask in enumerate(masks):
        mask_paths.append(os.path.join(workdir, f"predicted_mask_{index}.npy"))
        np.save(mask_paths[-1], mask)
    with open(os.path.join(workdir, "volume_metrics.json"), "w") as f:
        json.dump({"pooled": pooled, "volumes": figures}, f, indent=2)
    per_volume = ", ".join(f"{f['components_pred']}/{f['components_true']}" for f in figures)
    return [
        f"sliding-window inference on {len(pairs)} test volume(s) (patch {d.patch_size}, "
        f"overlap {d.window_overlap}, {d.window_blend} blend): dice {pooled['dice']:.4f} vs "
        f"{pooled['all_foreground_dice']:.4f} for all foreground, clDice "
        f"{pooled['cldice_mean']:.4f}",
        f"connected components predicted vs true: {pooled['components_pred']} vs "
        f"{pooled['components_true']} (per volume {per_volume})",
        *(f"predicted mask: {path}" for path in mask_paths),
    ]
