"""The surface task's embedded volumes and the patches cut from any volumes.

Embedded volumes (`generate_volume`) imitate a piece of a tightly wound scroll: curved
papyrus sheets, stacked with narrow air gaps, that sometimes touch. Per volume:

  * Geometry. Sheets are the level sets of a warped radial coordinate: `r` is the distance
    to a scroll axis parallel to axis 0 whose centre lies 0.75-1.5 volume sides away from
    the volume's centre (so the sheets are arcs, not rings), plus `warp` voxels times a
    smooth unit-variance random field (correlation length a sixth of the side). The
    sheets repeat every `s` voxels of `r`, with `s` drawn from `sheet_spacing`.
  * Fill. A voxel is papyrus (label 1) when its position across the period, `frac(r / s)`,
    is below the local fill `f = clip(fill_mean + fill_std * g, 0, 1)`, `g` another smooth
    field (correlation length an eighth of the side). The label fraction of a region is
    about its mean `f`: patches range from about a quarter to nearly all papyrus, and where
    `f` nears 1 the gap `(1 - f) * s` shrinks below a voxel and neighbouring sheets touch.
  * Image. Partial-volume occupancy `sigmoid(-d / blur)` from the signed distance `d` (in
    voxels, across the sheet) to the nearest sheet face, times a fibre texture along axis 0
    (`1 + fibre_contrast * h`, `h` an elongated smooth field), times a smooth bias field
    `1 + bias * b`, plus white noise of standard deviation `noise`; a sheet's interior has
    intensity about 1 and air about 0 before the noise. With `air_contrast` below 1 the
    air sits at `1 - air_contrast` instead (the occupancy is mapped to
    `1 - air_contrast + air_contrast * occupancy`, in units of the sheet intensity): the
    minority class is then hard to tell apart voxel by voxel while the labels stay the
    same (the `imbalance` variants: at 0.6 the class means lie about 0.67 pooled standard
    deviations apart instead of 1.2). Finally a random flip of each axis and a random
    order of the axes, so the scroll axis and the sheets take any of the grid's
    orientations.

Every volume is normalised to zero mean and unit variance (the same is done to user
volumes). The splits are drawn from independent child streams of the seed, so the test
volumes do not change with the number of training volumes.

User volumes (`data.source`) are read by `jaxguard.tasks.surface.sources`; `splits.py` picks
embedded or user volumes and builds the splits.

Patches (`sample_patches`, `tile_volume`): training patches are cubes of `patch_size`
centred, with probability `foreground_prob`, on a random papyrus voxel and otherwise on a
random air voxel; evaluation patches tile the held-out volumes without overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

SPLITS = ("train", "val", "test")
# Scroll-axis distance from the volume's centre, in volume sides: the sheets are arcs.
_AXIS_DISTANCE = (0.75, 1.5)
# Correlation lengths of the smooth fields, as fractions of the volume side.
_WARP_CORRELATION = 1 / 6
_FILL_CORRELATION = 1 / 8
_BIAS_CORRELATION = 1 / 3
# Fibre texture: elongated along axis 0 (the scroll axis), short across it, in voxels.
_FIBRE_CORRELATION = (4.0, 0.7, 0.7)


def _smooth_field(rng: np.random.Generator, shape, correlation) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with the given correlation length(s)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=correlation, mode="wrap")
    return (field - field.mean()) / field.std()


def generate_volume(
    rng: np.random.Generator,
    *,
    size: int,
    sheet_spacing: Sequence[float],
    fill_mean: float,
    fill_std: float,
    warp: float,
    blur: float,
    fibre_contrast: float,
    bias: float,
    noise: float,
    air_contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One embedded volume and its papyrus mask (see the module docstring).

    Args:
      rng: the generator the volume is drawn from.
      size: side of the cubic volume in voxels.
      sheet_spacing: `(low, high)` range of the sheet period in voxels.
      fill_mean: mean papyrus fraction, in (0, 1).
      fill_std: spatial standard deviation of the local papyrus fraction.
      warp: amplitude (standard deviation) of the sheets' warping, in voxels.
      blur: width of the partial-volume edge, in voxels (> 0).
      fibre_contrast: relative amplitude of the fibre texture inside the sheets.
      bias: relative amplitude of the smooth intensity bias field.
      noise: standard deviation of the white noise, in units of the sheet intensity.
      air_contrast: how much darker air is than papyrus, in units of the sheet intensity:
        air sits at `1 - air_contrast` before the fibre, bias and noise factors. 1 (air at
        0) is the default image; smaller values make the minority class (air) hard to tell
        apart from papyrus.

    Returns:
      `(volume, mask)`: float32 `[size, size, size]` normalised to zero mean and unit
      variance, and uint8 `[size, size, size]` in {0, 1}.
    """
    shape = (size,) * 3
    axis0, axis1, axis2 = np.indices(shape, dtype=np.float64)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    distance = rng.uniform(*_AXIS_DISTANCE) * size
    centre = (size - 1) / 2.0
    radial = np.hypot(
        axis1 - (centre + distance * np.sin(angle)), axis2 - (centre + distance * np.cos(angle))
    )
    radial = radial + warp * _smooth_field(rng, shape, _WARP_CORRELATION * size)
    spacing = rng.uniform(*sheet_spacing)
    across = np.mod(radial / spacing + rng.uniform(), 1.0)  # position across a period, [0, 1)
    fill = np.clip(
        fill_mean + fill_std * _smooth_field(rng, shape, _FILL_CORRELATION * size), 0.0, 1.0
    )
    mask = across < fill
    # Distance in voxels to the nearest sheet face, negative inside the papyrus.
    inside = np.minimum(across, fill - across) * spacing
    outside = np.minimum(across - fill, 1.0 - across) * spacing
    signed = np.where(mask, -inside, outside)
    occupancy = 1.0 / (1.0 + np.exp(signed / blur))
    # 1 - 1.0 + 1.0 * occupancy is occupancy exactly: the default image is unchanged.
    intensity = (1.0 - air_contrast) + air_contrast * occupancy
    fibres = 1.0 + fibre_contrast * _smooth_field(rng, shape, _FIBRE_CORRELATION)
    bias_field = 1.0 + bias * _smooth_field(rng, shape, _BIAS_CORRELATION * size)
    volume = intensity * fibres * bias_field + noise * rng.standard_normal(shape)

    # Any orientation: flip each axis with probability 1/2, then permute the axes.
    flips = tuple(axis for axis in range(3) if rng.random() < 0.5)
    order = tuple(rng.permutation(3))
    volume = np.transpose(np.flip(volume, flips), order)
    mask = np.transpose(np.flip(mask, flips), order)
    return normalise(volume), mask.astype(np.uint8)


def normalise(volume: np.ndarray) -> np.ndarray:
    """`volume` shifted and scaled to zero mean and unit variance, float32."""
    volume = np.asarray(volume, np.float64)
    std = volume.std()
    # A constant volume has no contrast to keep: centre it and leave the scale alone.
    return ((volume - volume.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def generate_volumes(data, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The embedded `(volume, mask)` pairs of every split, from `config.data` and the seed."""
    counts = (data.num_train_volumes, data.num_val_volumes, data.num_test_volumes)
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    settings = dict(
        size=data.volume_size,
        sheet_spacing=tuple(data.sheet_spacing),
        fill_mean=data.fill_mean,
        fill_std=data.fill_std,
        warp=data.warp,
        blur=data.blur,
        fibre_contrast=data.fibre_contrast,
        bias=data.bias,
        noise=data.noise,
        air_contrast=data.air_contrast,
    )
    volumes = {}
    for name, count, stream in zip(SPLITS, counts, streams, strict=True):
        rng = np.random.default_rng(stream)
        volumes[name] = [generate_volume(rng, **settings) for _ in range(count)]
    return volumes


# ----------------------------------------------------------------------------- patches


def _crop(array: np.ndarray, corner: Sequence[int], size: int) -> np.ndarray:
    return array[tuple(slice(c, c + size) for c in corner)]


def sample_patches(
    rng: np.random.Generator,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    count: int,
    size: int,
    foreground_prob: float,
) -> dict[str, np.ndarray]:
    """`count` random cubic patches of side `size` from the `(volume, mask)` pairs.

    Each patch comes from a volume picked with probability proportional to its voxel count;
    with probability `foreground_prob` it is centred on a random papyrus voxel, else on a
    random air voxel (among the voxels a whole patch fits around; when that class is absent
    there, on any such voxel).

    Returns:
      `{"volume": float32 [count, size, size, size], "labels": float32 [count, ...]}`.
    """
    sizes = np.array([volume.size for volume, _ in pairs], np.float64)
    volumes, labels = [], []
    for _ in range(count):
        volume, mask = pairs[rng.choice(len(pairs), p=sizes / sizes.sum())]
        # The class of the voxel at the centre of every patch that fits: index = patch corner.
        half = size // 2
        centre = mask[tuple(slice(half, n - size + 1 + half) for n in mask.shape)]
        wanted = 1 if rng.random() < foreground_prob else 0
        candidates = np.argwhere(centre == wanted)
        if len(candidates) == 0:
            candidates = np.argwhere(np.ones_like(centre, bool))
        corner = candidates[rng.integers(len(candidates))]
        volumes.append(_crop(volume, corner, size))
        labels.append(_crop(mask, corner, size))
    return {
        "volume": np.stack(volumes).astype(np.float32),
        "labels": np.stack(labels).astype(np.float32),
    }


def tile_volume(volume: np.ndarray, mask: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Non-overlapping cubic tiles of side `size` covering `floor(n / size) * size` per axis."""
    counts = [n // size for n in volume.shape]
    corners = np.stack(np.meshgrid(*[np.arange(c) * size for c in counts], indexing="ij"), -1)
    corners = corners.reshape(-1, 3)
    return {
        "volume": np.stack([_crop(volume, c, size) for c in corners]).astype(np.float32),
        "labels": np.stack([_crop(mask, c, size) for c in corners]).astype(np.float32),
    }


def tile_volumes(pairs: list[tuple[np.ndarray, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    tiles = [tile_volume(volume, mask, size) for volume, mask in pairs]
    return {key: np.concatenate([t[key] for t in tiles]) for key in ("volume", "labels")}
