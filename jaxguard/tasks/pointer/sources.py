"""User data of the pointer task: images and a CSV or JSON file of their objects.

`data.source` names the file; the images it lists are read from its folder (relative
paths) with Pillow, so any format Pillow reads works (PNG, JPEG, TIFF, BMP, GIF, WebP, ...):

  CSV: a header with the columns `image`, `column`, `row`, then one row per object,
       an image's rows in visiting order.
  JSON: `{"image.png": [[column, row], ...], ...}`, each list in visiting order.

Positions are pixels, 0-based, the centre of the top-left pixel at `(0, 0)`, given as
numbers (a JSON string or null, or a CSV cell that is not a number, is refused). Every
image becomes 8-bit grey `[H, W]` (`read_grey`): grey as is; 16-bit grey scaled to 8 bits
(`round(v / 257)`); 1-bit as 0/255; palette, RGB, CMYK and YCbCr (JPEG) images through RGB
to ITU-R 601 luma; alpha dropped; the first frame of an animation or a multi-page file.
32-bit float images are refused (their range is unknown). All images must have one size.
Images are split into train/val/test by a seeded shuffle, so an image never appears in two
splits; each split holds the examples of `data.make_examples`.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image

from jaxguard.config import ConfigError, MissingInputError
from jaxguard.tasks.pointer import coords, data
from jaxguard.tasks.user_files import one_line

SUFFIXES = (".csv", ".json")
_LUMA = np.array([0.299, 0.587, 0.114])


def _is_number(value) -> bool:
    """A JSON number: int or float, not a bool (`true` is not a coordinate), string or null."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_coordinates(path: str) -> dict[str, list[tuple[float, float]]]:
    """`{image file: [(column, row), ...]}` in file order, from a CSV or JSON file."""
    if path.endswith(".json"):
        with open(path) as f:
            try:
                table = json.load(f)
            except json.JSONDecodeError as error:
                raise ConfigError(f"data.source {path}: not valid JSON ({error})") from None
        if not isinstance(table, dict):
            raise ConfigError(
                f'data.source {path}: expected {{"image.png": [[column, row], ...]}}, got a '
                f"{type(table).__name__}"
            )
        result = {}
        for image, points in table.items():
            if not isinstance(points, list) or any(
                not isinstance(p, list | tuple) or len(p) != 2 for p in points
            ):
                raise ConfigError(
                    f"data.source {path}: image {image}: expected a list of [column, row] pairs"
                )
            for index, point in enumerate(points):
                if not all(_is_number(v) for v in point):
                    raise ConfigError(
                        f"data.source {path}: image {image} object {index}: [column, row] = "
                        f"{json.dumps(point)} are not both numbers"
                    )
            result[image] = [(float(c), float(r)) for c, r in points]
        return result
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "column", "row"} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(
                    f"data.source {path}: the header lacks column(s) {', '.join(sorted(missing))} "
                    "(expected image,column,row)"
                )
            result: dict[str, list[tuple[float, float]]] = {}
            for line, record in enumerate(reader, start=2):
                points = result.setdefault(record["image"], [])
                if not record["column"] and not record["row"]:
                    continue  # An image listed without objects; reported as empty below.
                try:
                    points.append((float(record["column"]), float(record["row"])))
                except ValueError:
                    raise ConfigError(
                        f"data.source {path} line {line}: column/row {record['column']!r}, "
                        f"{record['row']!r} are not numbers"
                    ) from None
        return result
    raise ConfigError(f"data.source {path}: expected a .csv or .json file of object positions")


def check_source(source: str) -> None:
    """Raises a ConfigError unless `source` names an existing .csv or .json file."""
    if not source.endswith(SUFFIXES):
        raise ConfigError(
            f"data.source {source}: expected a .csv or .json file of object positions"
        )
    if not os.path.isfile(source):
        raise MissingInputError(f"data.source {source}: no such file")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raises a ConfigError unless `data.val_fraction` and `data.test_fraction` can split."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must "
            "be in (0, 1) with a sum below 1"
        )


def _grey(image: Image.Image) -> np.ndarray:
    """A Pillow image as 8-bit grey `[H, W]` uint8, converted as the module docstring says."""
    if image.mode in ("L", "LA", "La"):
        return np.asarray(image.getchannel(0), np.uint8)
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"{image.mode} image holds values outside 0-65535 ({values.min():g} to "
                f"{values.max():g}); save it as 8- or 16-bit grey"
            )
        return np.round(values / 257.0).astype(np.uint8)  # 65535 / 257 = 255
    if image.mode == "F":
        raise ValueError("32-bit float image, whose range is unknown; save it as 8- or 16-bit")
    if image.mode == "1":
        return np.asarray(image.convert("L"), np.uint8)
    # Palette, RGB(A), CMYK, YCbCr, ...: RGB by Pillow, then luma in float64 (not Pillow's
    # fixed-point "L" conversion), rounded once.
    rgb = np.asarray(image.convert("RGB"), np.float64)
    return np.clip(np.round(rgb @ _LUMA), 0, 255).astype(np.uint8)


def read_grey(path: str) -> np.ndarray:
    """The image at `path` as 8-bit grey `[H, W]` uint8 (module docstring).

    Raises:
      ValueError or OSError: the file is not an image Pillow reads, is truncated, or has a mode
        without a defined grey conversion (32-bit float).
    """
    with Image.open(path) as image:
        image.load()  # Decodes now: a truncated file fails here, not later.
        return _grey(image)


def _image_size(source: str, path: str) -> tuple[int, int]:
    """`(height, width)` of the image at `path`, read from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(
            f"data.source {source}: image {path}: not a readable image ({one_line(error)})"
        ) from None
    return height, width


def source_image_size(source: str) -> tuple[int, int]:
    """`(height, width)` of the user images listed in `source` (read from the first one)."""
    first = sorted(_read_coordinates(source))[0]
    return _image_size(source, os.path.join(os.path.dirname(os.path.abspath(source)), first))


def load_folder(
    source: str,
    *,
    val_fraction: float,
    test_fraction: float,
    done_fraction: float,
    examples_per_image: int,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Splits built from user images and their object positions (see the module docstring).

    Raises:
      ConfigError: a missing file or image, coordinates outside their image or not finite,
        an image without objects, images of different sizes, or too few images to split.
    """
    if not os.path.isfile(source):
        raise MissingInputError(f"data.source {source}: no such file")
    data.check_example_settings(done_fraction, examples_per_image)
    check_fractions(val_fraction, test_fraction)
    table = _read_coordinates(source)
    if len(table) < 3:
        raise ConfigError(
            f"data.source {source}: {len(table)} image(s) listed; train, val and test need at "
            "least one each"
        )
    folder = os.path.dirname(os.path.abspath(source))
    names = sorted(table)
    images, objects, size = [], [], None
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise MissingInputError(
                f"data.source {source}: image {name} not found (looked for {path})"
            )
        try:
            pixels = read_grey(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ConfigError(
                f"data.source {source}: image {name}: not a readable image ({one_line(error)})"
            ) from None
        if size is None:
            size, first = pixels.shape, name
        elif pixels.shape != size:
            raise ConfigError(
                f"data.source {source}: images must share one size; {first} is {size[1]} x "
                f"{size[0]} (width x height), {name} is {pixels.shape[1]} x {pixels.shape[0]}"
            )
        points = np.array(table[name], np.float64).reshape(-1, 2)
        if len(points) == 0:
            raise ConfigError(f"data.source {source}: image {name} has an empty object list")
        xy = coords.pixels_to_normalized(points, size)
        outside = ~np.all(np.isfinite(xy) & (xy >= 0.0) & (xy <= 1.0), axis=1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise ConfigError(
                f"data.source {source}: image {name} object {i} at (column {points[i, 0]:g}, row "
                f"{points[i, 1]:g}) lies outside the {size[1]} x {size[0]} image (columns and "
                f"rows run from -0.5 to {size[1] - 0.5:g} and {size[0] - 0.5:g})"
            )
        images.append(pixels)
        objects.append(xy.astype(np.float32))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    n_val = max(1, int(round(val_fraction * len(names))))
    n_test = max(1, int(round(test_fraction * len(names))))
    if n_val + n_test >= len(names):
        raise ConfigError(
            f"data.source {source}: {len(names)} images leave none for training with "
            f"val_fraction {val_fraction} and test_fraction {test_fraction}"
        )
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    max_objects = max(len(o) for o in objects)
    stacked = np.stack(images)
    return {
        name: data.make_examples(
            rng,
            stacked[parts[name]],
            [objects[i] for i in parts[name]],
            done_fraction=done_fraction,
            examples_per_image=examples_per_image,
            max_objects=max_objects,
            image_ids=parts[name],
        )
        for name in data.SPLITS
    }
