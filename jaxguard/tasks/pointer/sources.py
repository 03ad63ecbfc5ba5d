"""User data of the pointer task: PNG images and a CSV or JSON file of their objects.

`data.source` names the file; the PNG images it lists are read from its folder (relative
paths):

  CSV: a header with the columns `image`, `column`, `row`, then one row per object,
       an image's rows in visiting order.
  JSON: `{"image.png": [[column, row], ...], ...}`, each list in visiting order.

Positions are pixels, 0-based, the centre of the top-left pixel at `(0, 0)`. Colour
images are converted to grey (ITU-R 601 luma, alpha dropped); all images must have
one size. Images are split into train/val/test by a seeded shuffle, so an image
never appears in two splits; each split holds the examples of `data.make_examples`.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from jaxguard import png
from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords, data

SUFFIXES = (".csv", ".json")
_LUMA = np.array([0.299, 0.587, 0.114])


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
        raise ConfigError(f"data.source {source}: no such file")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raises a ConfigError unless `data.val_fraction` and `data.test_fraction` can split."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must "
            "be in (0, 1) with a sum below 1"
        )


def _grey(pixels: np.ndarray) -> np.ndarray:
    """`[H, W, C]` uint8 -> `[H, W]` uint8 (luma for colour, alpha dropped)."""
    if pixels.shape[2] <= 2:
        return pixels[..., 0]
    return np.clip(np.round(pixels[..., :3] @ _LUMA), 0, 255).astype(np.uint8)


def source_image_size(source: str) -> tuple[int, int]:
    """`(height, width)` of the user images listed in `source` (read from the first one)."""
    first = sorted(_read_coordinates(source))[0]
    return png.read_size(os.path.join(os.path.dirname(os.path.abspath(source)), first))


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
        raise ConfigError(f"data.source {source}: no such file")
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
            raise ConfigError(f"data.source {source}: image {name} not found (looked for {path})")
        try:
            pixels = _grey(png.read_png(path))
        except png.PngError as error:
            raise ConfigError(f"data.source {source}: {error}") from None
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
