"""Readers of the surface task's user files: one array from an .npy, .npz, TIFF or zarr entry.

`jaxguard.tasks.surface.sources` pairs volumes with masks and validates them; this module only
reads. A source (`data.source`) is an `.npz` file or a zarr group holding arrays `volume` and
`mask` (`read_source_file`), or a folder with `volumes/` and `masks/` whose entries
(`list_entries`, `read_entry`) are `.npy` files, single-array `.npz` files, multi-page
`.tif`/`.tiff` stacks (pages = D), `.zarr` stores holding one array, or sub-folders of 2-D
TIFF slices (`volumes/scroll1/0000.tif, 0001.tif, ...`) stacked in name order, digit runs
compared as numbers.

TIFF and zarr need the optional `io` extra (`pip install 'jaxguard[io]'`: tifffile,
zarr >= 3), imported only when such a file is read. Every problem (missing package,
unreadable file, missing array, several arrays where one is expected) is a one-line
ConfigError that starts with `data.source:` and the path.
"""

from __future__ import annotations

import importlib
import os
import re

import numpy as np

from jaxguard.config import ConfigError
from jaxguard.tasks.user_files import is_zarr, one_line

_TIFF_SUFFIXES = (".tif", ".tiff")
ENTRY_KINDS = ".npy, .npz, multi-page .tif/.tiff, .zarr, or a folder of 2-D .tif slices"


def _suffix(path: str) -> str:
    return os.path.splitext(path.rstrip(os.sep))[1].lower()


def _natural_key(name: str) -> list:
    """Sort key comparing the digit runs of `name` as numbers: `2.tif` before `10.tif`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _unreadable(path: str, what: str, error: BaseException) -> ConfigError:
    return ConfigError(f"data.source: {path}: not a readable {what} ({one_line(error)})")


def _require(module: str, path: str, what: str):
    """The optional `module` (tifffile or zarr), imported now, or a ConfigError on how to add it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"data.source: {path}: reading {what} needs the {module} package, which is not "
            "installed; pip install 'jaxguard[io]'"
        ) from error


def _read_npy(path: str) -> np.ndarray:
    """The array in a `.npy` file."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, OSError, EOFError, ... on bad files
        raise _unreadable(path, ".npy file", error) from error


def _read_npz(path: str, key: str | None = None) -> np.ndarray:
    """The array named `key` in an `.npz` file, or its only array when `key` is None."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None and len(names) == 1:
                key = names[0]
            if key in names:
                return archive[key]
    except Exception as error:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise _unreadable(path, ".npz file", error) from error
    if key is None:
        raise ConfigError(
            f"data.source: {path}: holds {len(names)} arrays {names}; a file in volumes/ or "
            "masks/ must hold exactly one"
        )
    raise ConfigError(f"data.source: {path}: has no array {key!r} (it has {names})")


def _read_tiff(path: str) -> np.ndarray:
    """The image in a TIFF file: `[D, H, W]` for a multi-page stack, `[H, W]` for one page.

    A file whose pages differ in shape (several TIFF series) is refused rather than read in
    part.
    """
    tifffile = _require("tifffile", path, "TIFF files")
    try:
        with tifffile.TiffFile(path) as tiff:
            shapes = [tuple(series.shape) for series in tiff.series]
            if len(shapes) == 1:
                return tiff.series[0].asarray()
    except Exception as error:  # tifffile.TiffFileError (a ValueError), OSError, ...
        raise _unreadable(path, "TIFF file", error) from error
    raise ConfigError(
        f"data.source: {path}: holds {len(shapes)} image series of shapes {shapes}; a volume "
        "TIFF must be one stack of equally shaped pages"
    )


def _read_tiff_volume(path: str) -> np.ndarray:
    """A multi-page TIFF stack as a `[D, H, W]` volume (pages = D)."""
    volume = _read_tiff(path)
    if volume.ndim != 3:
        raise ConfigError(
            f"data.source: {path}: TIFF image has shape {volume.shape}; a volume TIFF must be a "
            "multi-page stack [D, H, W] (or put 2-D slices in a folder, one file per slice)"
        )
    return volume


def _read_tiff_slices(folder: str) -> np.ndarray:
    """The 2-D `.tif`/`.tiff` slices in `folder`, stacked in name order into `[D, H, W]`.

    Digit runs in the names compare as numbers (`2.tif` before `10.tif`), so zero-padded and
    unpadded slice numbers both stack in order. Other files in the folder are ignored.
    """
    names = sorted(
        (n for n in os.listdir(folder) if _suffix(n) in _TIFF_SUFFIXES and not n.startswith(".")),
        key=_natural_key,
    )
    if not names:
        raise ConfigError(
            f"data.source: {folder}: folder holds no .tif/.tiff slices; a folder in volumes/ or "
            "masks/ must be a stack of 2-D TIFF slices"
        )
    slices, first = [], None
    for name in names:
        path = os.path.join(folder, name)
        image = _read_tiff(path)
        if image.ndim != 2:
            raise ConfigError(
                f"data.source: {path}: slice has shape {image.shape}; the files in a slice "
                "folder must be 2-D images"
            )
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            raise ConfigError(
                f"data.source: {path}: slice has shape {image.shape} but {first[0]} has shape "
                f"{first[1]}; all slices of a volume must have the same shape"
            )
        slices.append(image)
    return np.stack(slices)


def _open_zarr(path: str):
    """`(zarr module, the array or group stored at path)`, opened read-only."""
    zarr = _require("zarr", path, "zarr stores")
    try:
        return zarr, zarr.open(store=path, mode="r")
    except Exception as error:  # zarr raises ValueError subclasses, JSONDecodeError, OSError
        raise _unreadable(path, "zarr store", error) from error


def _zarr_members(path: str, group) -> tuple[list[str], list[str]]:
    """The names of the arrays of a zarr group and all its members (sub-groups with a '/')."""
    try:
        arrays = sorted(group.array_keys())
        groups = sorted(group.group_keys())
    except Exception as error:
        raise _unreadable(path, "zarr store", error) from error
    return arrays, sorted(arrays + [name + "/" for name in groups])


def _zarr_to_numpy(path: str, group, key: str | None = None) -> np.ndarray:
    """All of a zarr array (`group[key]`, or `group` itself when `key` is None) as NumPy."""
    where = path if key is None else f"{path}/{key}"
    try:
        return np.asarray((group if key is None else group[key])[...])
    except Exception as error:  # e.g. RuntimeError from a codec on a corrupt chunk
        raise _unreadable(where, "zarr array", error) from error


def _read_zarr_array(path: str) -> np.ndarray:
    """The array in a zarr store: an array store, or a group holding exactly one array."""
    zarr, node = _open_zarr(path)
    if isinstance(node, zarr.Array):
        return _zarr_to_numpy(path, node)
    arrays, members = _zarr_members(path, node)
    if len(arrays) != 1:
        raise ConfigError(
            f"data.source: {path}: zarr group holds {len(arrays)} arrays {members}; a store in "
            "volumes/ or masks/ must hold exactly one"
        )
    return _zarr_to_numpy(path, node, arrays[0])


def _read_zarr_group(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays `volume` and `mask` of a zarr group, read whole into NumPy."""
    zarr, node = _open_zarr(path)
    if not isinstance(node, zarr.Group):
        raise ConfigError(
            f"data.source: {path}: is a zarr array, not a group; data.source needs a group "
            "with arrays 'volume' and 'mask' (or a folder with volumes/ and masks/)"
        )
    arrays, members = _zarr_members(path, node)
    for key in ("volume", "mask"):
        if key not in arrays:
            raise ConfigError(f"data.source: {path}: has no array {key!r} (it has {members})")
    return _zarr_to_numpy(path, node, "volume"), _zarr_to_numpy(path, node, "mask")


def _entry_stem(folder: str, name: str) -> str | None:
    """The name a volume or mask entry of `folder` is paired on, or None if it is not one.

    Entries are `.npy`, `.npz`, `.tif`/`.tiff` files, zarr stores and other sub-folders
    (stacks of 2-D TIFF slices); hidden entries and other files are not.
    """
    if name.startswith("."):
        return None
    path = os.path.join(folder, name)
    stem, suffix = os.path.splitext(name)
    if os.path.isdir(path):
        return stem if suffix.lower() == ".zarr" else name  # a zarr store or slice folder
    return stem if suffix.lower() in (".npy", ".npz", *_TIFF_SUFFIXES) else None


def list_entries(folder: str) -> list[tuple[str, str]]:
    """`(stem, path)` of the volume or mask entries of `folder`, in name order."""
    entries = []
    for name in sorted(os.listdir(folder)):
        stem = _entry_stem(folder, name)
        if stem is not None:
            entries.append((stem, os.path.join(folder, name)))
    stems = [stem for stem, _ in entries]
    for stem, path in entries:
        if stems.count(stem) > 1:
            others = [p for s, p in entries if s == stem]
            raise ConfigError(
                f"data.source: {path}: {len(others)} entries of {folder} are named {stem!r} "
                f"({', '.join(os.path.basename(p) for p in others)}); keep one"
            )
    return entries


def read_entry(path: str) -> np.ndarray:
    """The array of one volume or mask entry of a `volumes/` or `masks/` folder."""
    if is_zarr(path):
        return _read_zarr_array(path)
    if os.path.isdir(path):
        return _read_tiff_slices(path)
    suffix = _suffix(path)
    if suffix in _TIFF_SUFFIXES:
        return _read_tiff_volume(path)
    return _read_npz(path) if suffix == ".npz" else _read_npy(path)


def read_source_file(source: str) -> tuple[np.ndarray, np.ndarray]:
    """`volume` and `mask` of an `.npz` file or a zarr group, as stored (3-D or 4-D)."""
    if is_zarr(source):
        return _read_zarr_group(source)
    suffix = _suffix(source)
    if suffix == ".npz":
        return _read_npz(source, "volume"), _read_npz(source, "mask")
    if suffix in _TIFF_SUFFIXES:
        raise ConfigError(
            f"data.source: {source}: a single TIFF holds no mask; put it in a folder as "
            "volumes/NAME.tif with its mask as masks/NAME.tif and point data.source at the folder"
        )
    raise ConfigError(
        f"data.source: {source}: not an .npz file, a .zarr store or a folder with volumes/ and "
        "masks/"
    )
