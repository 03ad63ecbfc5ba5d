"""The ensemble panel of the cVAE task: draw samples, render them, write PNG and npz.

Shared by the training run's `export` hook and `python -m jaxguard.sample`, so
both write the same files for the same predictors and seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from jaxguard.png import write_png

# Precipitation colours from dry (white) to heavy (dark blue), anchors at 0, 1/3, 2/3, 1.
_RAIN_COLOURS = np.array(
    [[1.0, 1.0, 1.0], [0.62, 0.85, 0.95], [0.16, 0.48, 0.78], [0.10, 0.10, 0.45]]
)
_EXTREME_COLOUR = np.array([0.85, 0.10, 0.10])
_NONFINITE_COLOUR = np.array([0.5, 0.5, 0.5])  # NaN/Inf pixels: a diverged model.
# Predictor colours from the channel's minimum (dark) to its maximum (yellow).
_PREDICTOR_COLOURS = np.array([[0.15, 0.05, 0.30], [0.15, 0.55, 0.55], [0.98, 0.90, 0.15]])
_ZOOM = 3
_GAP = 2


def _colour_map(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """`[...]` values in [0, 1] -> `[..., 3]` colours interpolated between `anchors`.

    A NaN is drawn as 0 (callers paint non-finite pixels over it).
    """
    position = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(anchors) - 1)
    low = np.minimum(np.floor(position).astype(int), len(anchors) - 2)
    share = (position - low)[..., None]
    return anchors[low] * (1.0 - share) + anchors[low + 1] * share


def _rain_tile(field: np.ndarray, vmax: float, threshold: float) -> np.ndarray:
    # sqrt scale: the heavy tail would otherwise leave everything but the peaks white.
    scaled = np.sqrt(np.maximum(field, 0.0) / vmax)
    colours = _colour_map(scaled, _RAIN_COLOURS)
    colours = np.where((field > threshold)[..., None], _EXTREME_COLOUR, colours)
    return np.where(np.isfinite(field)[..., None], colours, _NONFINITE_COLOUR)


def _finite_max(values: np.ndarray) -> float:
    """The largest finite value, or 0 when there is none (a model that output NaN)."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def render_panel(
    predictors: np.ndarray,
    truth: np.ndarray | None,
    samples: np.ndarray,
    *,
    threshold: float,
) -> np.ndarray:
    """An RGB panel: one row per example; predictors, truth, then the ensemble members.

    Args:
      predictors: `[K, h, w, C]` raw predictors.
      truth: `[K, H, W]` true fields, or None (the truth column is left blank).
      samples: `[K, n, H, W]` ensemble members (mm/day).
      threshold: pixels above it are drawn red.

    Returns:
      `[rows, cols, 3]` float image in [0, 1]. Precipitation uses one sqrt colour scale
      per row (0 to the row's largest finite value; NaN and Inf pixels are grey); each
      predictor channel is scaled to its own range over the shown examples.
    """
    examples, members, height, width = samples.shape
    factor = height // predictors.shape[1]
    low = predictors.min(axis=(0, 1, 2))
    span = np.maximum(predictors.max(axis=(0, 1, 2)) - low, 1e-12)
    rows = []
    for k in range(examples):
        row_fields = samples[k] if truth is None else np.concatenate([truth[k][None], samples[k]])
        vmax = max(_finite_max(row_fields), 1e-6)
        tiles = []
        for channel in range(predictors.shape[-1]):
            coarse = (predictors[k, ..., channel] - low[channel]) / span[channel]
            fine = np.kron(coarse, np.ones((factor, factor)))
            tiles.append(_colour_map(fine, _PREDICTOR_COLOURS))
        tiles.append(
            np.ones((height, width, 3)) if truth is None else _rain_tile(truth[k], vmax, threshold)
        )
        tiles += [_rain_tile(samples[k, i], vmax, threshold) for i in range(members)]
        zoomed = [np.kron(t, np.ones((_ZOOM, _ZOOM, 1))) for t in tiles]
        gap = np.ones((height * _ZOOM, _GAP, 3))
        rows.append(np.concatenate([part for t in zoomed for part in (t, gap)][:-1], axis=1))
    gap = np.ones((2 * _GAP, rows[0].shape[1], 3))
    return np.concatenate([part for r in rows for part in (r, gap)][:-1], axis=0)


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
    write_png(png_path, render_panel(predictors, truth, samples, threshold=threshold))
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
    return f"rows: samples {', '.join(map(str, indices))}; columns: {columns}; red: extreme pixels"
