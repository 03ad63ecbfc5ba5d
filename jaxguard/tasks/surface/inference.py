"""Sliding-window inference over a whole volume with overlapping, blended patches.

`sliding_window_predict` cuts a volume into cubic patches on a regular grid whose stride
is `patch_size * (1 - overlap)` (the last patch of each axis is aligned with the volume's
end, so every voxel is covered), runs the patch predictor on batches of them and blends
the overlapping predictions with per-voxel weights:

    prediction(x) = sum_p w_p(x) * f(patch_p)(x) / sum_p w_p(x)

`blend="constant"` weighs every voxel of a patch equally (a plain average);
`blend="gaussian"` weighs it by `exp(-|x - centre|^2 / (2 (sigma_scale * patch_size)^2))`,
normalised to a maximum of 1 and floored at `min_weight`, so predictions near a patch's
centre, which saw the most context, count more (the scheme of nnU-Net and MONAI's
`sliding_window_inference`; `sigma_scale = 0.125` is their default). Both weightings
reassemble an identity predictor's input exactly: sums are taken in float64 and cast back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLENDS = ("gaussian", "constant")


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis: every `stride` voxels, plus one aligned with the end."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def blend_weights(
    patch_size: int, blend: str, *, sigma_scale: float = 0.125, min_weight: float = 1e-3
) -> np.ndarray:
    """`[patch, patch, patch]` float64 blending weights (see the module docstring)."""
    if blend == "constant":
        return np.ones((patch_size,) * 3)
    if blend != "gaussian":
        raise ValueError(f"blend_weights: `blend` must be one of {BLENDS}, got {blend!r}.")
    if sigma_scale <= 0 or not 0 < min_weight <= 1:
        raise ValueError(
            f"blend_weights: need sigma_scale > 0 and min_weight in (0, 1], got {sigma_scale} "
            f"and {min_weight}."
        )
    offset = np.arange(patch_size) - (patch_size - 1) / 2.0
    squared = offset[:, None, None] ** 2 + offset[None, :, None] ** 2 + offset[None, None, :] ** 2
    weights = np.exp(-squared / (2.0 * (sigma_scale * patch_size) ** 2))
    # Why the floor: a voxel covered only by patch corners would otherwise get a weight near 0.
    return np.maximum(weights / weights.max(), min_weight)


def sliding_window_predict(
    predict_patch: Callable[[np.ndarray], np.ndarray],
    volume: np.ndarray,
    patch_size: int,
    overlap: float,
    blend: str = "gaussian",
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Blended patch predictions over a whole volume.

    Args:
      predict_patch: maps a batch of patches `[batch_size, P, P, P]` to per-voxel
        predictions of the same shape (e.g. foreground probabilities). It is always called
        with exactly `batch_size` patches (the last batch is padded by repeating a patch),
        so a jitted predictor compiles once.
      volume: `[D, H, W]` array, every side `>= patch_size`.
      patch_size: side `P` of the cubic patches.
      overlap: fraction of a patch shared by neighbouring patches, in `[0, 1)`; the stride
        is `max(1, round(P * (1 - overlap)))`.
      blend: "gaussian" or "constant" (see the module docstring).
      batch_size: patches per call of `predict_patch`.

    Returns:
      `[D, H, W]` blended predictions in the volume's dtype.
    """
    fn = "sliding_window_predict"
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{fn}: `volume` must be [D, H, W], got shape {volume.shape}.")
    if min(volume.shape) < patch_size:
        raise ValueError(
            f"{fn}: every side of `volume` {volume.shape} must be >= patch_size={patch_size}."
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"{fn}: `overlap` must lie in [0, 1), got {overlap}.")
    if batch_size < 1:
        raise ValueError(f"{fn}: `batch_size` must be >= 1, got {batch_size}.")
    weights = blend_weights(patch_size, blend)
    stride = max(1, int(round(patch_size * (1.0 - overlap))))
    grids = [window_starts(n, patch_size, stride) for n in volume.shape]
    corners = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)
    total = np.zeros(volume.shape, np.float64)
    weight_sum = np.zeros(volume.shape, np.float64)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        windows = [tuple(slice(c, c + patch_size) for c in corner) for corner in chunk]
        patches = np.stack([volume[w] for w in windows])
        padding = batch_size - len(chunk)
        if padding:
            patches = np.concatenate([patches, np.repeat(patches[-1:], padding, axis=0)])
        predictions = np.asarray(predict_patch(patches), np.float64)
        if predictions.shape != patches.shape:
            raise ValueError(
                f"{fn}: `predict_patch` returned shape {predictions.shape} for patches of "
                f"shape {patches.shape}; they must be equal."
            )
        for window, prediction in zip(windows, predictions, strict=False):
            total[window] += weights * prediction
            weight_sum[window] += weights
    return (total / weight_sum).astype(volume.dtype)
