"""Pictures of pointer predictions for TensorBoard, drawn with NumPy alone.

`render_example` draws one validation example: the grey input image with its
marked objects (blue dots, the last marked one magenta), the true next object as
a green circle, the prediction as a red circle, a yellow line between the two
centres, and a caption strip below the image with the pixel error and the
predicted and true done values (`ERR=23PX`, `DONE PRED=0.12 TRUE=0`). Final steps
(no next object) get no green circle and no line, and `ERR=-`.

Pixels are addressed as `(column, row)`; points come in normalised coordinates
and are placed with `coords.normalized_to_pixels`.
"""

from __future__ import annotations

import math

import numpy as np

from jaxguard.tasks.pointer import coords

GREEN = (0, 255, 0)
RED = (255, 0, 0)
YELLOW = (255, 255, 0)
BLUE = (0, 128, 255)
MAGENTA = (255, 0, 255)
WHITE = (255, 255, 255)

RING_THICKNESS = 2.0  # Pixels whose centre is within this of the radius, inside it, are drawn.
MARK_RADIUS = 3.0
TEXT_SCALE = 2  # Each font pixel becomes a TEXT_SCALE x TEXT_SCALE block.

# A 3 x 5 bitmap font for the captions, rows top to bottom.
_FONT = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ".": ("000", "000", "000", "000", "010"),
    "=": ("000", "111", "000", "111", "000"),
    "-": ("000", "000", "111", "000", "000"),
    " ": ("000", "000", "000", "000", "000"),
    "A": ("010", "101", "111", "101", "101"),
    "D": ("110", "101", "101", "101", "110"),
    "E": ("111", "100", "111", "100", "111"),
    "N": ("110", "101", "101", "101", "101"),
    "O": ("111", "101", "101", "101", "111"),
    "P": ("110", "101", "110", "100", "100"),
    "R": ("110", "101", "110", "101", "101"),
    "T": ("111", "010", "010", "010", "010"),
    "U": ("101", "101", "101", "101", "111"),
    "X": ("101", "101", "010", "101", "101"),
}
_GLYPH_WIDTH, _GLYPH_HEIGHT = 3, 5


def circle_radius(image_size) -> int:
    """Radius in pixels of the prediction and target circles: 10 px on 384 px images."""
    return max(3, round(min(image_size) / 40))


def _distance_to(canvas: np.ndarray, centre) -> np.ndarray:
    rows, columns = np.indices(canvas.shape[:2])
    return np.hypot(columns - centre[0], rows - centre[1])


def draw_ring(canvas: np.ndarray, centre, radius: float, color) -> None:
    """Colours, in place, the pixels whose centre lies `RING_THICKNESS` or less inside `radius`.

    `centre` is `(column, row)` in pixels (floats allowed).
    """
    distance = _distance_to(canvas, centre)
    canvas[(distance <= radius) & (distance > radius - RING_THICKNESS)] = color


def draw_disc(canvas: np.ndarray, centre, radius: float, color) -> None:
    """Colours, in place, the pixels whose centre lies within `radius` of `centre`."""
    canvas[_distance_to(canvas, centre) <= radius] = color


def draw_line(canvas: np.ndarray, start, end, color) -> None:
    """Bresenham line between the integer pixels `start` and `end` (`(column, row)`), in place.

    Both end pixels are drawn; pixels outside the canvas are skipped.
    """
    (c0, r0), (c1, r1) = (int(v) for v in start), (int(v) for v in end)
    dc, dr = abs(c1 - c0), -abs(r1 - r0)
    step_c, step_r = (1 if c1 > c0 else -1), (1 if r1 > r0 else -1)
    error = dc + dr
    height, width = canvas.shape[:2]
    while True:
        if 0 <= r0 < height and 0 <= c0 < width:
            canvas[r0, c0] = color
        if c0 == c1 and r0 == r1:
            return
        doubled = 2 * error
        if doubled >= dr:
            error += dr
            c0 += step_c
        if doubled <= dc:
            error += dc
            r0 += step_r


def draw_text(canvas: np.ndarray, text: str, corner, color, scale: int = TEXT_SCALE) -> None:
    """Writes `text` (digits, `.=- ` and the letters of `_FONT`) with its top-left at `corner`.

    Characters are `3 * scale` pixels wide with a `scale`-pixel gap; text that runs off
    the canvas is cut.
    """
    column, row = corner
    height, width = canvas.shape[:2]
    for character in text.upper():
        glyph = _FONT[character]
        for gy, line in enumerate(glyph):
            for gx, bit in enumerate(line):
                if bit == "1":
                    r, c = row + gy * scale, column + gx * scale
                    rows = slice(max(r, 0), min(r + scale, height))
                    canvas[rows, max(c, 0) : min(c + scale, width)] = color
        column += (_GLYPH_WIDTH + 1) * scale


def caption_lines(pixel_error: float, done_prob: float, done_true: float) -> tuple[str, str]:
    """The two caption lines, e.g. `("ERR=23PX", "DONE PRED=0.12 TRUE=0")`."""
    error = "-" if not math.isfinite(pixel_error) else f"{pixel_error:.0f}PX"
    return f"ERR={error}", f"DONE PRED={done_prob:.2f} TRUE={done_true:.0f}"


def caption_height(scale: int = TEXT_SCALE) -> int:
    """Height of the caption strip: two text lines with margins."""
    return (2 * _GLYPH_HEIGHT + 3) * scale


def render_example(
    image: np.ndarray,
    objects: np.ndarray,
    num_marked: int,
    target_xy: np.ndarray,
    pred_xy: np.ndarray,
    done_true: float,
    done_prob: float,
) -> np.ndarray:
    """One example as an `[H + caption, W, 3]` uint8 picture (see the module docstring).

    Args:
      image: `[H, W]` or `[H, W, 1]` uint8 grey image.
      objects: `[M, 2]` normalised object positions in visiting order.
      num_marked: objects marked in the input (`k`).
      target_xy: `[2]` normalised true next object; ignored when `done_true` is 1.
      pred_xy: `[2]` normalised prediction.
      done_true: 1 when there is no next object, else 0.
      done_prob: predicted done probability.
    """
    grey = np.asarray(image, np.uint8).reshape(image.shape[0], image.shape[1])
    size = grey.shape
    canvas = np.repeat(grey[..., None], 3, axis=-1)
    positions = coords.normalized_to_pixels(np.asarray(objects)[:num_marked], size)
    for i, centre in enumerate(positions):
        draw_disc(canvas, centre, MARK_RADIUS, MAGENTA if i == num_marked - 1 else BLUE)
    radius = circle_radius(size)
    pred = coords.normalized_to_pixels(pred_xy, size)
    error = math.nan
    if done_true < 0.5:
        target = coords.normalized_to_pixels(target_xy, size)
        error = float(coords.pixel_error(pred_xy, target_xy, size))
        if np.all(np.isfinite(pred)):
            # Why: a wild prediction (1e6 px away) would make Bresenham walk a million steps.
            reach = 2 * max(size)
            draw_line(canvas, np.rint(target), np.clip(np.rint(pred), -reach, reach), YELLOW)
        draw_ring(canvas, target, radius, GREEN)
    draw_ring(canvas, pred, radius, RED)
    strip = np.zeros((caption_height(), size[1], 3), np.uint8)
    first, second = caption_lines(error, done_prob, done_true)
    draw_text(strip, first, (TEXT_SCALE, TEXT_SCALE), YELLOW)
    draw_text(strip, second, (TEXT_SCALE, (_GLYPH_HEIGHT + 2) * TEXT_SCALE), WHITE)
    return np.concatenate([canvas, strip], axis=0)
