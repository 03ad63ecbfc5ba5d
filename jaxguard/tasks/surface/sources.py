"""The surface task's user volumes (`data.source`): read, paired, validated and split.

All volumes are read whole into memory as NumPy arrays (a training set of a few cropped
volumes; nothing is streamed). `data.source` names one of:

  * an `.npz` file or a zarr group (a `.zarr` store) holding arrays `volume` and `mask`,
    each `[D, H, W]` or a stack `[N, D, H, W]`;
  * a folder with `volumes/` and `masks/` subfolders whose entries pair by name without
    the suffix (`volumes/a.tif` with `masks/a.npy` is fine), taken in name order. An entry
    is a `.npy` file, a single-array `.npz` file, a multi-page `.tif`/`.tiff` stack
    (pages = D), a `.zarr` store holding one array, or a sub-folder of 2-D TIFF slices
    (`volumes/scroll1/0000.tif, 0001.tif, ...`) stacked in name order, digit runs compared
    as numbers (`jaxguard.tasks.surface.readers` reads them).

Volumes must hold real numbers (integers or floats; complex is refused), masks 0/1 as bool,
integers or floats. TIFF and zarr need the optional `io` extra
(`pip install 'jaxguard[io]'`: tifffile, zarr >= 3), imported only when such a file is read.
Every problem with the files (missing, unreadable, a missing array, mismatched shapes, a
non-binary mask) is a one-line ConfigError that starts with `data.source:` and the path.
Each volume is normalised as the embedded ones are (`data.normalise`).
"""

from __future__ import annotations

import os

import numpy as np

from jaxguard import _checks
from jaxguard.config import ConfigError, MissingInputError
from jaxguard.tasks.surface import readers
from jaxguard.tasks.surface.data import normalise
from jaxguard.tasks.user_files import is_zarr


def _load_folder(source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `(volume, mask)` pairs of a folder with `volumes/` and `masks/`, paired by stem."""
    volume_dir, mask_dir = os.path.join(source, "volumes"), os.path.join(source, "masks")
    for folder in (volume_dir, mask_dir):
        if not os.path.isdir(folder):
            raise ConfigError(
                f"data.source: folder {folder} not found; a folder source must hold volumes/ and "
                "masks/ subfolders or be a .zarr store"
            )
    volumes = readers.list_entries(volume_dir)
    if not volumes:
        raise ConfigError(f"data.source: {volume_dir}: no volumes in it ({readers.ENTRY_KINDS})")
    masks = dict(readers.list_entries(mask_dir))
    pairs = []
    for stem, volume_path in volumes:
        if stem not in masks:
            raise ConfigError(
                f"data.source: {os.path.join(mask_dir, os.path.basename(volume_path))} not "
                f"found: {volume_path} needs a mask named {stem!r} in {mask_dir} "
                f"({readers.ENTRY_KINDS})"
            )
        pair = check_pair(
            readers.read_entry(volume_path), readers.read_entry(masks[stem]), volume_path
        )
        pairs.append(pair)
    return pairs


def _stack(array: np.ndarray, path: str, name: str) -> np.ndarray:
    if array.ndim == 3:
        return array[None]
    if array.ndim != 4:
        raise ConfigError(
            f"data.source: {path}: {name} must be [D, H, W] or [N, D, H, W], got shape "
            f"{array.shape}"
        )
    return array


def _is_real(array: np.ndarray) -> bool:
    """Integers or floats: what a volume may hold (not bool, complex, strings or objects)."""
    return np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)


def check_pair(volume: np.ndarray, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A validated `(volume, mask)` pair: equal 3-D shapes, finite real volume, binary mask.

    Volume values must be finite and within `±jaxguard._checks.MAX_INPUT_MAGNITUDE` (1e15):
    one voxel at 1e30 would dominate the normalisation's std and flatten every other voxel to
    the same float32 value. A complex volume is refused rather than silently cut to its real
    part.

    Returns the volume normalised (float32) and the mask as uint8.
    """
    if volume.shape != mask.shape:
        raise ConfigError(
            f"data.source: {where}: volume has shape {volume.shape} but mask has shape "
            f"{mask.shape}; they must be equal"
        )
    if volume.ndim != 3:
        raise ConfigError(f"data.source: {where}: volume must be 3-D, got shape {volume.shape}")
    if volume.size == 0:
        raise ConfigError(
            f"data.source: {where}: volume has shape {volume.shape}, an empty axis; every axis "
            "must be at least 1"
        )
    if not _is_real(volume):
        hint = (
            " (keep np.abs(volume) or volume.real explicitly)" if volume.dtype.kind == "c" else ""
        )
        raise ConfigError(
            f"data.source: {where}: volume has dtype {volume.dtype}; expected real numbers "
            f"(integers or floats){hint}"
        )
    problem = _checks.input_value_problem("volume", volume)
    if problem:
        raise ConfigError(f"data.source: {where}: {problem}")
    if not (_is_real(mask) or mask.dtype == bool):
        raise ConfigError(
            f"data.source: {where}: mask has dtype {mask.dtype}; expected 0/1 as bool, integers "
            "or floats"
        )
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6].astype(np.float64))
        raise ConfigError(
            f"data.source: {where}: mask is not binary (values {shown}"
            f"{', ...' if values.size > 6 else ''}); map it to 0/1 first, e.g. an ignore "
            "label to 0"
        )
    return normalise(volume), mask.astype(np.uint8)


def load_volumes(source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `(volume, mask)` pairs in `source`, validated by `check_pair`.

    Each volume is float32 `[D, H, W]`, normalised, and its mask uint8 `[D, H, W]` in {0, 1}.
    `source` is an `.npz` file or a zarr group (arrays `volume` and `mask`, `[D, H, W]` or
    `[N, D, H, W]`), or a folder with `volumes/` and `masks/` (see the module docstring).
    Everything is read whole into memory.
    """
    if not os.path.exists(source):
        raise MissingInputError(f"data.source: {source} not found")
    if os.path.isdir(source) and not is_zarr(source):
        return _load_folder(source)
    volume, mask = readers.read_source_file(source)
    volumes = _stack(volume, source, "volume")
    masks = _stack(mask, source, "mask")
    if volumes.shape != masks.shape:
        raise ConfigError(
            f"data.source: {source}: volume has shape {volumes.shape} but mask has shape "
            f"{masks.shape}; they must be equal"
        )
    return [
        check_pair(v, m, f"{source}[{i}]")
        for i, (v, m) in enumerate(zip(volumes, masks, strict=True))
    ]


def split_volumes(
    pairs: list[tuple[np.ndarray, np.ndarray]], *, num_val: int, num_test: int, patch_size: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """User volumes in order: the last `num_test` for test, the `num_val` before for val."""
    if len(pairs) < num_val + num_test + 1:
        raise ConfigError(
            f"data.source holds {len(pairs)} volume(s) but data.num_val_volumes={num_val} and "
            f"data.num_test_volumes={num_test} leave none for training; crop a large volume "
            "into several"
        )
    for index, (volume, _) in enumerate(pairs):
        if min(volume.shape) < patch_size:
            raise ConfigError(
                f"data.source: volume {index} has shape {volume.shape}, smaller than "
                f"data.patch_size={patch_size}"
            )
    train_end = len(pairs) - num_val - num_test
    return {
        "train": pairs[:train_end],
        "val": pairs[train_end : train_end + num_val],
        "test": pairs[train_end + num_val :],
    }
