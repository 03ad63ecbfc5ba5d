"""The ensemble panel of the cVAE task: draw samples, plot them (matplotlib), write PNG and npz.

Shared by the training run's `export` hook and `python -m jaxguard.sample`, so
both write the same files for the same predictors and seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from jaxguard import figures

RAIN_UNITS = "mm/day"


def panel_figure(
    predictors: np.ndarray,
    truth: np.ndarray | None,
    samples: np.ndarray,
    *,
    threshold: float,
    title: str,
    row_labels: Sequence[str] | None = None,
    member_labels: Sequence[str] | None = None,
) -> Figure:
    """One row per example: each predictor channel, the truth, then the ensemble members.

    Args:
      predictors: `[K, h, w, C]` raw predictors.
      truth: `[K, H, W]` true fields (mm/day), or None (the truth column is left empty).
      samples: `[K, n, H, W]` ensemble members (mm/day).
      threshold: the extreme threshold (mm/day), drawn as a red contour; `inf` for none.
      title: the figure title.
      row_labels: `[K]` names of the rows (default `example k`).
      member_labels: `[n]` column titles of the members (default `member i`).

    Returns:
      The figure. Precipitation (truth and members) shares one square-root colour scale from
      0 to the largest finite value shown, with one colorbar; each predictor channel has its
      own scale over the shown examples and its own colorbar. NaN and Inf pixels are grey.
    """
    examples, members = samples.shape[:2]
    channels = predictors.shape[-1]
    figure, axes = figures.image_grid(examples, channels + 1 + members, tile=1.3)
    for c in range(channels):
        low, high = figures.finite_range(predictors[..., c], floor=1e-12)
        norm = colors.Normalize(low, high)
        for k in range(examples):
            image = figures.show_field(axes[k, c], predictors[k, ..., c], cmap="viridis", norm=norm)
        axes[0, c].set_title(f"predictor {c}", fontsize="small")
        figures.shared_colorbar(figure, image, axes[:, c], f"predictor {c}\n(input units)")
    rain = samples if truth is None else np.concatenate([truth[:, None], samples], axis=1)
    _, vmax = figures.finite_range(np.concatenate([[0.0], np.ravel(rain)]), floor=1e-6)
    # Square-root scale: the heavy tail would otherwise leave everything but the peaks pale.
    rain_norm = colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    titles = ["truth"] + list(member_labels or [f"member {i}" for i in range(members)])
    for k in range(examples):
        axes[k, 0].set_ylabel(row_labels[k] if row_labels else f"example {k}", fontsize="small")
        fields = [None if truth is None else truth[k], *samples[k]]
        for column, field in enumerate(fields, start=channels):
            ax = axes[k, column]
            if field is None:
                ax.set_axis_off()
                continue
            image = figures.show_field(ax, np.maximum(field, 0.0), cmap="Blues", norm=rain_norm)
            if (
                math.isfinite(threshold)
                and np.nanmax(np.where(np.isfinite(field), field, 0)) > threshold
            ):
                ax.contour(np.nan_to_num(field), levels=[threshold], colors="red", linewidths=0.8)
    for column, name in enumerate(titles, start=channels):
        axes[0, column].set_title(name, fontsize="small")
    figures.shared_colorbar(
        figure, image, axes[:, channels:], f"precipitation ({RAIN_UNITS}, square-root scale)"
    )
    extreme = f"; red contour: > {threshold:.4g} {RAIN_UNITS}" if math.isfinite(threshold) else ""
    figure.suptitle(title + extreme)
    return figure


def draw_ensemble(
    generate: Callable[[np.ndarray, np.ndarray], np.ndarray],
    predictors: np.ndarray,
    *,
    num_samples: int,
    d_z: int,
    seed: int,
) -> np.ndarray:
    """`num_samples` downscaled fields per predictor set: `[K, h, w, C] -> [K, n, H, W]`.

    Args:
      generate: `(y [M, h, w, C], latent_noise [M, d_z]) -> fields [M, H, W]`.
      predictors: `[K, h, w, C]` raw predictors.
      num_samples: ensemble members per example.
      d_z: latent dimensions of the model.
      seed: seeds the latent noise (the same seed gives the same ensemble).
    """
    examples = predictors.shape[0]
    tiled = np.repeat(predictors, num_samples, axis=0)
    noise = np.random.default_rng(seed).standard_normal((examples * num_samples, d_z))
    fields = np.asarray(generate(tiled, noise.astype(np.float32)))
    return fields.reshape(examples, num_samples, *fields.shape[1:])


def write_ensemble(
    out_dir: str,
    *,
    predictors: np.ndarray,
    truth: np.ndarray | None,
    samples: np.ndarray,
    indices: np.ndarray,
    threshold: float,
) -> tuple[str, str]:
    """Writes `ensemble.npz` and `panel.png` to `out_dir`; returns their paths.

    The npz holds `samples` `[K, n, H, W]` (mm/day), `y` `[K, h, w, C]`, `indices`
    `[K]` (rows of the split, or of the predictor file), `threshold`, and `x`
    `[K, H, W]` when the truth is known.
    """
    os.makedirs(out_dir, exist_ok=True)
    npz_path = os.path.join(out_dir, "ensemble.npz")
    png_path = os.path.join(out_dir, "panel.png")
    arrays = {"samples": samples, "y": predictors, "indices": indices, "threshold": threshold}
    if truth is not None:
        arrays["x"] = truth
    np.savez(npz_path, **arrays)
    figure = panel_figure(
        predictors,
        truth,
        samples,
        threshold=threshold,
        title="cVAE ensemble: predictors, truth and prior draws",
        row_labels=[f"sample {i}" for i in indices],
    )
    figures.save_png(figure, png_path)
    return png_path, npz_path


def panel_examples(split, count: int, seed: int) -> np.ndarray:
    """Rows to show: the heaviest extreme days first (up to half), then random other days."""
    maxima = split["x"].reshape(len(split["x"]), -1).max(axis=1)
    count = min(count, len(maxima))
    extreme = np.flatnonzero(split["has_extreme"])
    heaviest = extreme[np.argsort(-maxima[extreme])][: (count + 1) // 2]
    others = np.setdiff1d(np.arange(len(maxima)), heaviest)
    rest = np.random.default_rng(seed).choice(others, size=count - len(heaviest), replace=False)
    return np.concatenate([heaviest, np.sort(rest)]).astype(int)


def panel_description(indices: np.ndarray, predictor_count: int, truth: bool, n: int) -> str:
    columns = f"{predictor_count} predictors, " + ("truth, " if truth else "") + f"{n} samples"
    return (
        f"rows: samples {', '.join(map(str, indices))}; columns: {columns}; red contour: extremes"
    )
