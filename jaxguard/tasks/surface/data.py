"""Volumes, masks and patches for the surface task: the embedded generator and user files.

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
    intensity about 1 and air about 0 before the noise. Finally a random flip of each axis
    and a random order of the axes, so the scroll axis and the sheets take any of the
    grid's orientations.

Every volume is normalised to zero mean and unit variance (the same is done to user
volumes). The splits are drawn from independent child streams of the seed, so the test
volumes do not change with the number of training volumes.

User volumes (`load_volumes`), all read whole into memory as NumPy arrays (a training set
of a few cropped volumes; nothing is streamed). `data.source` names one of:

  * an `.npz` file or a zarr group (a `.zarr` store) holding arrays `volume` and `mask`,
    each `[D, H, W]` or a stack `[N, D, H, W]`;
  * a folder with `volumes/` and `masks/` subfolders whose entries pair by name without
    the suffix (`volumes/a.tif` with `masks/a.npy` is fine), taken in name order. An entry
    is a `.npy` file, a single-array `.npz` file, a multi-page `.tif`/`.tiff` stack
    (pages = D), a `.zarr` store holding one array, or a sub-folder of 2-D TIFF slices
    (`volumes/scroll1/0000.tif, 0001.tif, ...`) stacked in name order, digit runs compared
    as numbers.

Masks must be binary (0/1 or bool). TIFF and zarr need the optional `io` extra
(`pip install 'jaxguard[io]'`: tifffile, zarr >= 3), imported only when such a file is read.
Every problem with the files (missing, unreadable, a missing array, mismatched shapes, a
non-binary mask) is a one-line ConfigError that starts with `data.source:` and the path.

Patches (`sample_patches`, `tile_volume`): training patches are cubes of `patch_size`
centred, with probability `foreground_prob`, on a random papyrus voxel and otherwise on a
random air voxel; evaluation patches tile the held-out volumes without overlap.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxguard.config import ConfigError

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
    fibres = 1.0 + fibre_contrast * _smooth_field(rng, shape, _FIBRE_CORRELATION)
    bias_field = 1.0 + bias * _smooth_field(rng, shape, _BIAS_CORRELATION * size)
    volume = occupancy * fibres * bias_field + noise * rng.standard_normal(shape)

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
    )
    volumes = {}
    for name, count, stream in zip(SPLITS, counts, streams, strict=True):
        rng = np.random.default_rng(stream)
        volumes[name] = [generate_volume(rng, **settings) for _ in range(count)]
    return volumes


# ----------------------------------------------------------------------------- user files

_TIFF_SUFFIXES = (".tif", ".tiff")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # zarr format 3, format 2 group, array
_ENTRY_KINDS = ".npy, .npz, multi-page .tif/.tiff, .zarr, or a folder of 2-D .tif slices"


def _suffix(path: str) -> str:
    return os.path.splitext(path.rstrip(os.sep))[1].lower()


def _is_zarr(path: str) -> bool:
    """Whether `path` is a zarr store on disk: a `.zarr` folder or one with zarr metadata."""
    if not os.path.isdir(path):
        return False
    return _suffix(path) == ".zarr" or any(
        os.path.exists(os.path.join(path, marker)) for marker in _ZARR_MARKERS
    )


def _natural_key(name: str) -> list:
    """Sort key comparing the digit runs of `name` as numbers: `2.tif` before `10.tif`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _unreadable(path: str, what: str, error: BaseException) -> ConfigError:
    return ConfigError(f"data.source: {path}: not a readable {what} ({_one_line(error)})")


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


def _entries(folder: str) -> list[tuple[str, str]]:
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


def _read_entry(path: str) -> np.ndarray:
    """The array of one volume or mask entry of a `volumes/` or `masks/` folder."""
    if _is_zarr(path):
        return _read_zarr_array(path)
    if os.path.isdir(path):
        return _read_tiff_slices(path)
    suffix = _suffix(path)
    if suffix in _TIFF_SUFFIXES:
        return _read_tiff_volume(path)
    return _read_npz(path) if suffix == ".npz" else _read_npy(path)


def _load_folder(source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `(volume, mask)` pairs of a folder with `volumes/` and `masks/`, paired by stem."""
    volume_dir, mask_dir = os.path.join(source, "volumes"), os.path.join(source, "masks")
    for folder in (volume_dir, mask_dir):
        if not os.path.isdir(folder):
            raise ConfigError(
                f"data.source: folder {folder} not found; a folder source must hold volumes/ and "
                "masks/ subfolders or be a .zarr store"
            )
    volumes = _entries(volume_dir)
    if not volumes:
        raise ConfigError(f"data.source: {volume_dir}: no volumes in it ({_ENTRY_KINDS})")
    masks = dict(_entries(mask_dir))
    pairs = []
    for stem, volume_path in volumes:
        if stem not in masks:
            raise ConfigError(
                f"data.source: {os.path.join(mask_dir, os.path.basename(volume_path))} not "
                f"found: {volume_path} needs a mask named {stem!r} in {mask_dir} "
                f"({_ENTRY_KINDS})"
            )
        pair = check_pair(_read_entry(volume_path), _read_entry(masks[stem]), volume_path)
        pairs.append(pair)
    return pairs


def _read_source_file(source: str) -> tuple[np.ndarray, np.ndarray]:
    """`volume` and `mask` of an `.npz` file or a zarr group, as stored (3-D or 4-D)."""
    if _is_zarr(source):
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


def _stack(array: np.ndarray, path: str, name: str) -> np.ndarray:
    if array.ndim == 3:
        return array[None]
    if array.ndim != 4:
        raise ConfigError(
            f"data.source: {path}: {name} must be [D, H, W] or [N, D, H, W], got shape "
            f"{array.shape}"
        )
    return array


def check_pair(volume: np.ndarray, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A validated `(volume, mask)` pair: equal 3-D shapes, finite volume, binary mask.

    Returns the volume normalised (float32) and the mask as uint8.
    """
    if volume.shape != mask.shape:
        raise ConfigError(
            f"data.source: {where}: volume has shape {volume.shape} but mask has shape "
            f"{mask.shape}; they must be equal"
        )
    if volume.ndim != 3:
        raise ConfigError(f"data.source: {where}: volume must be 3-D, got shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.number) or not np.isfinite(volume).all():
        raise ConfigError(f"data.source: {where}: volume must hold finite numbers")
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
        raise ConfigError(f"data.source: {source} not found")
    if os.path.isdir(source) and not _is_zarr(source):
        return _load_folder(source)
    volume, mask = _read_source_file(source)
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


def volumes_for(data, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The `(volume, mask)` pairs of every split: embedded, or from `data.source`."""
    if not data.source:
        return generate_volumes(data, seed)
    return split_volumes(
        load_volumes(data.source),
        num_val=data.num_val_volumes,
        num_test=data.num_test_volumes,
        patch_size=data.patch_size,
    )


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
