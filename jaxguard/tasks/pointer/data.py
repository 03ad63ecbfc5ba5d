"""Data of the pointer task: images with objects in a visiting order, as "mixed mode" examples.

An example shows an image in which the first `k` objects of its visiting order
are marked; the target is the position of object `k + 1` and `done = 0`, or,
when all `N` objects are marked (`k = N`), there is no next object and
`done = 1`. This is the seed's "mixed mode". Positions are normalised
coordinates (see `coords`).

Embedded data (`generate`): grey images of `image_size` x `image_size` pixels
holding `objects_min`..`objects_max` bright discs (21 on average by default, as
in the seed) on a dim, noisy background, at least three radii apart. The
visiting order is a nearest-neighbour tour from the top-left corner (see
`visiting_order`), or with `detour_rate` > 0 an annotator's tour that sometimes
goes to the second-nearest object instead. A `done_fraction` of the examples of each split is final
(`k = N`); the others draw `k` uniformly from `0..N-1`. (Drawing `k` uniformly
from `0..N` would give a done rate of about `1 / (N + 1)`, 4.5% for 21 objects;
the seed measured 3% in validation, so the rate is set directly.)

User data (`sources.load_folder`) is turned into the same examples by `make_examples`.

Every split is a dict of arrays with one row per example:
  image       uint8 `[n, H, W, 1]`
  objects     float32 `[n, M, 2]` every object's `(x, y)` in visiting order, zeros after
              `num_objects` (`M` is the largest object count in the data)
  num_objects int32 `[n]`;  num_marked int32 `[n]` (`k`)
  target_xy   float32 `[n, 2]` object `k + 1`, NaN when done
  done        float32 `[n]` 1 when all objects are marked
  image_id    int32 `[n]` the source image (embedded: its index in the split)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords

SPLITS = ("train", "val", "test")

# Rendering of the embedded images (intensities in [0, 1] before quantising to uint8).
_BACKGROUND = 0.1
_INTENSITY_RANGE = (0.55, 1.0)
_RADIUS_JITTER = (0.75, 1.25)  # Each disc's radius is object_radius times a factor in this range.
_SEPARATION_RADII = 3.0  # Minimum centre distance between objects, in object radii.


# ----------------------------------------------------------------------------- examples


def visiting_order(
    column_row: np.ndarray, *, detour_rate: float = 0.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices of `[N, 2]` positions in visiting order: a nearest-neighbour tour.

    The tour starts at the object nearest the image's top-left corner (pixel
    position `(-0.5, -0.5)`, normalised `(0, 0)`) and always moves on to the
    nearest object not yet visited (ties: the lower index).

    With `detour_rate` > 0 (a probability per step, `rng` required) the tour is an
    annotator's: at each step with at least two objects left it goes, with that
    probability, to the second-nearest object instead. Which steps detour is drawn
    independently of the image, so the next object is ambiguous between the two
    nearest; a model can only learn the odds, or memorise the training images' detours.
    With `detour_rate` 0 nothing is drawn from `rng`.
    """
    remaining = list(range(len(column_row)))
    current = np.array([-0.5, -0.5])
    order = []
    while remaining:
        distances = np.hypot(*(column_row[remaining] - current).T)
        rank = 0
        if detour_rate > 0 and len(remaining) > 1 and rng.random() < detour_rate:
            rank = 1
        # Why: a stable sort keeps the lower index first on ties, as argmin does.
        nearest = remaining.pop(int(np.argsort(distances, kind="stable")[rank]))
        order.append(nearest)
        current = column_row[nearest]
    return np.array(order, np.int64)


def make_examples(
    rng: np.random.Generator,
    images: np.ndarray,
    objects: Sequence[np.ndarray],
    *,
    done_fraction: float,
    examples_per_image: int,
    max_objects: int,
    image_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Mixed-mode examples of images whose objects are listed in visiting order.

    Args:
      rng: draws which examples are final and the `k` of the others.
      images: `[n, H, W]` uint8.
      objects: `n` arrays `[N_i, 2]` of normalised `(x, y)`, in visiting order, `N_i >= 1`.
      done_fraction: share of examples with every object marked, rounded to a count.
      examples_per_image: examples drawn per image (each with its own `k`).
      max_objects: `M`, the padded length of `objects` in the result.
      image_ids: `[n]` ids recorded per example; default `0..n-1`.

    Returns:
      A split, see the module docstring.
    """
    n_images = len(objects)
    source = np.repeat(np.arange(n_images), examples_per_image)
    n = len(source)
    counts = np.array([len(o) for o in objects], np.int32)[source]
    done = np.zeros(n, bool)
    done[rng.permutation(n)[: int(round(done_fraction * n))]] = True
    # Why: floor(u * N) is uniform on 0..N-1 and never reaches N.
    marked = np.where(done, counts, np.floor(rng.random(n) * counts).astype(np.int32))
    padded = np.zeros((n, max_objects, 2), np.float32)
    target = np.full((n, 2), np.nan, np.float32)
    for i, image_index in enumerate(source):
        padded[i, : counts[i]] = objects[image_index]
        if not done[i]:
            target[i] = objects[image_index][marked[i]]
    ids = np.arange(n_images) if image_ids is None else np.asarray(image_ids)
    return {
        "image": images[source][..., None],
        "objects": padded,
        "num_objects": counts,
        "num_marked": marked.astype(np.int32),
        "target_xy": target,
        "done": done.astype(np.float32),
        "image_id": ids[source].astype(np.int32),
    }


# ----------------------------------------------------------------------------- embedded data


def _place_objects(rng: np.random.Generator, count: int, size: int, radius: float) -> np.ndarray:
    """`[count, 2]` pixel centres inside the image, pairwise `_SEPARATION_RADII` radii apart."""
    margin = _RADIUS_JITTER[1] * radius + 1.0
    separation = _SEPARATION_RADII * radius
    accepted: list[np.ndarray] = []
    while len(accepted) < count:
        # Greedy in draw order: a candidate is taken unless an earlier pick is too close.
        candidates = rng.uniform(margin, size - 1 - margin, size=(4 * count, 2))
        blocked = np.zeros(len(candidates), bool)
        for previous in accepted:
            blocked |= np.hypot(*(candidates - previous).T) < separation
        for i in range(len(candidates)):
            if not blocked[i]:
                accepted.append(candidates[i])
                if len(accepted) == count:
                    break
                blocked |= np.hypot(*(candidates - candidates[i]).T) < separation
    return np.array(accepted)


def _render(
    rng: np.random.Generator, centres: np.ndarray, size: int, radius: float, noise: float
) -> np.ndarray:
    """A `[size, size]` uint8 image of soft-edged discs at `centres` on a noisy background."""
    image = rng.standard_normal((size, size), dtype=np.float32)
    image *= noise
    image += _BACKGROUND
    radii = radius * rng.uniform(*_RADIUS_JITTER, size=len(centres))
    intensities = rng.uniform(*_INTENSITY_RANGE, size=len(centres))
    for (column, row), r, value in zip(centres, radii, intensities, strict=True):
        reach = int(math.ceil(r)) + 1
        c0, r0 = int(round(column)) - reach, int(round(row)) - reach
        rows = np.arange(r0, r0 + 2 * reach + 1)[:, None]
        columns = np.arange(c0, c0 + 2 * reach + 1)[None, :]
        # Coverage ramps from 1 inside to 0 over one pixel at the rim: no aliased staircase.
        coverage = np.clip(r + 0.5 - np.hypot(columns - column, rows - row), 0.0, 1.0)
        window = image[r0 : r0 + 2 * reach + 1, c0 : c0 + 2 * reach + 1]
        window[...] = np.maximum(window, value * coverage)
    image *= 255.0
    np.clip(image, 0.0, 255.0, out=image)
    return np.rint(image, out=image).astype(np.uint8)


def _scenes(
    rng: np.random.Generator,
    n: int,
    *,
    image_size: int,
    objects_min: int,
    objects_max: int,
    object_radius: float,
    noise: float,
    detour_rate: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """`n` images and their objects' normalised positions in visiting order."""
    counts = rng.integers(objects_min, objects_max + 1, size=n)
    images = np.empty((n, image_size, image_size), np.uint8)
    objects = []
    for i, count in enumerate(counts):
        centres = _place_objects(rng, int(count), image_size, object_radius)
        centres = centres[visiting_order(centres, detour_rate=detour_rate, rng=rng)]
        images[i] = _render(rng, centres, image_size, object_radius, noise)
        objects.append(coords.pixels_to_normalized(centres, (image_size, image_size)))
    return images, objects


def generate(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    objects_min: int,
    objects_max: int,
    object_radius: float,
    noise: float,
    done_fraction: float,
    examples_per_image: int,
    seed: int,
    detour_rate: float = 0.0,
) -> dict[str, dict[str, np.ndarray]]:
    """The embedded train/val/test splits (`num_*` images each, see the module docstring).

    Splits come from independent child streams of `seed`, so the test split does not
    change with `num_train` or `num_val`. `detour_rate` (probability per tour step, see
    `visiting_order`) makes every split's visiting orders an annotator's; at 0 the splits
    are exactly those generated before the setting existed.
    """
    check_generator_settings(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        image_size=image_size,
        objects_min=objects_min,
        objects_max=objects_max,
        object_radius=object_radius,
        noise=noise,
        detour_rate=detour_rate,
    )
    check_example_settings(done_fraction, examples_per_image)
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    splits = {}
    for name, n, stream in zip(SPLITS, (num_train, num_val, num_test), streams, strict=True):
        rng = np.random.default_rng(stream)
        images, objects = _scenes(
            rng,
            n,
            image_size=image_size,
            objects_min=objects_min,
            objects_max=objects_max,
            object_radius=object_radius,
            noise=noise,
            detour_rate=detour_rate,
        )
        splits[name] = make_examples(
            rng,
            images,
            objects,
            done_fraction=done_fraction,
            examples_per_image=examples_per_image,
            max_objects=objects_max,
        )
    return splits


def check_generator_settings(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    objects_min: int,
    objects_max: int,
    object_radius: float,
    noise: float,
    detour_rate: float = 0.0,
) -> None:
    """Raises a ConfigError naming the first `data.*` key the generator cannot work with."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if value < 1:
            raise ConfigError(f"data.{name} must be >= 1, got {value}")
    if image_size < 1:
        raise ConfigError(f"data.image_size must be >= 1, got {image_size}")
    if not object_radius > 0:
        raise ConfigError(f"data.object_radius must be > 0, got {object_radius}")
    if not noise >= 0:
        raise ConfigError(f"data.noise must be >= 0, got {noise}")
    if not 0.0 <= detour_rate < 1.0:
        raise ConfigError(f"data.detour_rate must lie in [0, 1), got {detour_rate}")
    if not 1 <= objects_min <= objects_max:
        raise ConfigError(
            f"data.objects_min ({objects_min}) and data.objects_max ({objects_max}) must "
            "satisfy 1 <= objects_min <= objects_max"
        )
    # Discs at least 3 radii apart need about (3 r)^2 pixels each; keep room to spare.
    free_area = (image_size - 2 * _RADIUS_JITTER[1] * object_radius - 2) ** 2
    if objects_max * (_SEPARATION_RADII * object_radius) ** 2 > 0.35 * free_area:
        raise ConfigError(
            f"data.objects_max={objects_max} discs of radius {object_radius} px do not fit "
            f"{_SEPARATION_RADII:g} radii apart in a {image_size} x {image_size} image"
        )


def check_example_settings(done_fraction: float, examples_per_image: int) -> None:
    """Raises a ConfigError naming `data.done_fraction` or `data.examples_per_image` if bad."""
    if not 0.0 <= done_fraction <= 1.0:
        raise ConfigError(f"data.done_fraction must lie in [0, 1], got {done_fraction}")
    if examples_per_image < 1:
        raise ConfigError(f"data.examples_per_image must be >= 1, got {examples_per_image}")
