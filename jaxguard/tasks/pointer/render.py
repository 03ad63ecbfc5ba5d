"""Pictures of pointer predictions (matplotlib, through `jaxguard.figures`).

`overlay_figure` draws a few examples side by side: the grey input image (one intensity
colorbar for all), the marked objects (blue dots, the last marked one magenta), the true next
object as a green circle, the prediction as a red circle, a yellow line between the two
centres, a legend, and a title per example with the pixel error and the predicted and true
done values. Final steps (no next object) get no green circle and no line, and `error -`.

Pixels are addressed as `(column, row)` with pixel centres at integers, as `imshow` draws
them; points come in normalised coordinates and are placed with `coords.normalized_to_pixels`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colors, patches
from matplotlib.figure import Figure

from jaxguard import figures
from jaxguard.tasks.pointer import coords

TARGET, PREDICTION, LINE = "tab:green", "tab:red", "gold"
MARKED, LAST_MARKED = "tab:blue", "magenta"


def circle_radius(image_size) -> int:
    """Radius in pixels of the prediction and target circles: 10 px on 384 px images."""
    return max(3, round(min(image_size) / 40))


def caption(pixel_error: float, done_prob: float, done_true: float) -> str:
    """An example's title, e.g. `error 23 px, done p 0.12 (true 0)`."""
    error = "-" if not math.isfinite(pixel_error) else f"{pixel_error:.0f} px"
    return f"error {error}, done p {done_prob:.2f} (true {done_true:.0f})"


def draw_example(
    ax,
    image: np.ndarray,
    objects: np.ndarray,
    num_marked: int,
    target_xy: np.ndarray,
    pred_xy: np.ndarray,
    done_true: float,
    done_prob: float,
    norm: colors.Normalize,
):
    """Draws one example on `ax`; returns the image artist (for the colorbar).

    Args:
      ax: a matplotlib axes.
      image: `[H, W]` or `[H, W, 1]` grey image.
      objects: `[M, 2]` normalised object positions in visiting order.
      num_marked: objects marked in the input (`k`).
      target_xy: `[2]` normalised true next object; ignored when `done_true` is 1.
      pred_xy: `[2]` normalised prediction.
      done_true: 1 when there is no next object, else 0.
      done_prob: predicted done probability.
      norm: the intensity scale shared by every example of the figure.
    """
    grey = np.asarray(image, np.float64).reshape(image.shape[0], image.shape[1])
    size = grey.shape
    shown = figures.show_field(ax, grey, cmap="gray", norm=norm)
    marked = coords.normalized_to_pixels(np.asarray(objects)[:num_marked], size)
    if num_marked > 1:
        ax.scatter(*marked[:-1].T, s=12, color=MARKED, label="marked objects")
    if num_marked:
        ax.scatter(*marked[-1], s=16, color=LAST_MARKED, label="last marked")
    radius = circle_radius(size)
    pred = coords.normalized_to_pixels(pred_xy, size)
    error = math.nan
    if done_true < 0.5:
        target = coords.normalized_to_pixels(target_xy, size)
        error = float(coords.pixel_error(pred_xy, target_xy, size))
        if np.all(np.isfinite(pred)):
            ax.plot(*np.stack([target, pred]).T, color=LINE, linewidth=1)
        ax.add_patch(
            patches.Circle(target, radius, fill=False, color=TARGET, lw=1.5, label="true next")
        )
    if np.all(np.isfinite(pred)):
        ax.add_patch(
            patches.Circle(pred, radius, fill=False, color=PREDICTION, lw=1.5, label="predicted")
        )
    ax.set_xlim(-0.5, size[1] - 0.5)  # A wild prediction must not zoom the image away.
    ax.set_ylim(size[0] - 0.5, -0.5)
    ax.set_title(caption(error, done_prob, done_true), fontsize="small")
    return shown


def overlay_figure(outputs, batch, indices, *, title: str) -> Figure:
    """The examples `indices` of a batch drawn side by side, one legend and intensity colorbar.

    Args:
      outputs: `xy` `[N, 2]` and `done_prob` `[N]` of the model.
      batch: `image` `[N, H, W, 1]`, `objects` `[N, M, 2]`, `num_marked`, `target_xy`, `done`.
      indices: the examples drawn.
      title: the figure title.
    """
    images = np.asarray(batch["image"])
    figure, axes = figures.image_grid(1, len(indices), tile=2.4, extra_height=1.4)
    norm = colors.Normalize(*figures.finite_range(images[list(indices)], floor=1e-6))
    for ax, i in zip(axes[0], indices, strict=True):
        shown = draw_example(
            ax,
            images[i],
            batch["objects"][i],
            int(batch["num_marked"][i]),
            batch["target_xy"][i],
            np.asarray(outputs["xy"][i]),
            float(batch["done"][i]),
            float(outputs["done_prob"][i]),
            norm,
        )
    legend = {}
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    figure.legend(list(legend.values()), list(legend), loc="outside upper right", fontsize="small")
    figures.shared_colorbar(figure, shown, axes, "pixel intensity (0-255)")
    figure.suptitle(title, x=0.02, ha="left")
    return figure
