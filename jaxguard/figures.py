"""The figures a run writes: matplotlib on the Agg canvas, shared by every task.

Each function here takes arrays or log rows and returns a `matplotlib.figure.Figure` with a
title, labelled axes with units and, for images, one colorbar per quantity shared by every
panel that shows it. `save_png` writes a figure as PNG (matplotlib encodes it with Pillow);
`to_rgb` renders it as a `[H, W, 3]` uint8 array for TensorBoard; `write_figures` renders each
figure once and writes both (the PNG encoded by Pillow).
Figures are built on `Figure` directly, never through `pyplot`, so nothing opens a window,
holds global state or needs a display. Sizes are `DPI` pixels per inch of `figsize`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps, colors, patches, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 72  # Small on purpose: a figure renders in tens of milliseconds and stays a few tens of KB.
FIGURE_DIR = "figures"  # Under the run directory.
BAD_COLOUR = "0.6"  # Grey for NaN and Inf pixels (a diverged model).
EVENT_COLOURS = {"stop": "tab:red", "warn": "tab:orange", "info": "tab:gray"}


def new_figure(width: float, height: float) -> Figure:
    """An empty Agg-backed figure of `width` x `height` inches (`DPI` pixels per inch)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_rgb(figure: Figure) -> np.ndarray:
    """The figure rendered as an `[H, W, 3]` uint8 array (`H, W` = figsize x DPI)."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(figure: Figure, path: str) -> str:
    """Writes the figure to `path` as PNG at `DPI`; returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def write_figures(workdir: str, figures: Mapping[str, Figure], writer, step: int) -> list[str]:
    """Saves `<workdir>/figures/<name>.png` and logs each as TensorBoard image `figures/<name>`.

    Args:
      workdir: the run directory.
      figures: `{name: figure}`.
      writer: anything with `write_images(step, {tag: [H, W, 3] uint8})`.
      step: the TensorBoard step of the images.

    Returns:
      The paths written, in the order of `figures`.
    """
    folder = os.path.join(workdir, FIGURE_DIR)
    os.makedirs(folder, exist_ok=True)
    images, paths = {}, []
    for name, figure in figures.items():
        images[f"{FIGURE_DIR}/{name}"] = rgb = to_rgb(figure)  # Drawn once, for both outputs.
        paths.append(os.path.join(folder, f"{name}.png"))
        Image.fromarray(rgb).save(paths[-1], format="PNG")
    writer.write_images(step, images)
    return paths


def finite_range(values: np.ndarray, *, floor: float | None = None) -> tuple[float, float]:
    """`(min, max)` of the finite values (`(0, 1)` when none); `floor` bounds the span below."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if floor is not None:
        high = max(high, low + floor)
    return low, high


# ----------------------------------------------------------------------------- curves


def column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    """`[len(rows)]` float values of `key` in `rows` (NaN where missing or empty)."""
    return np.array([as_float(row.get(key)) for row in rows], np.float64)


def as_float(value) -> float:
    """`float(value)`, or NaN for None, an empty CSV cell or text that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def mark_events(ax, events: Sequence[Mapping], steps_per_epoch: int) -> None:
    """Guard events as vertical lines at their epoch (`step / steps_per_epoch - 1`).

    An evaluation at the end of epoch e happens at step `(e + 1) * steps_per_epoch`, so an
    event lines up with the row of the epoch it was raised in; one raised inside an epoch
    falls between rows. Each guard gets one legend entry.
    """
    labelled = set()
    for event in events:
        x = event["step"] / max(steps_per_epoch, 1) - 1.0
        label = f"{event['guard']} ({event['level']})"
        ax.axvline(
            x,
            color=EVENT_COLOURS.get(event["level"], "tab:purple"),
            linestyle="--",
            linewidth=1,
            label=None if label in labelled else label,
        )
        labelled.add(label)


def learning_curves(
    rows: Sequence[Mapping[str, float]],
    events: Sequence[Mapping],
    *,
    steps_per_epoch: int,
    monitor: str | None,
    monitor_values: np.ndarray | None,
    loss_terms: Sequence[str] = (),
    title: str,
) -> Figure:
    """Losses (left) and the monitored metric (right) per epoch, guard events marked.

    Args:
      rows: `log.csv` rows (`epoch`, `train_loss`, `val_loss`, `val_<metric>` ...).
      events: `guard_events.jsonl` records (`guard`, `level`, `step`).
      steps_per_epoch: places the events on the epoch axis.
      monitor: the monitored expression (`guard.best` / early stopping), or None.
      monitor_values: `[len(rows)]` its value per row; ignored without `monitor`.
      loss_terms: further loss columns of the rows to draw: `train_<term>` (the epoch's mean
        of a raw loss term) or `val_<name>`.
      title: the figure title.
    """
    figure = new_figure(9, 3.6)
    losses, watched = figure.subplots(1, 2)
    epochs = column(rows, "epoch")
    for key in ("train_loss", "val_loss", *loss_terms):
        label = key.replace("train_", "train ", 1).replace("val_", "validation ", 1)
        values = column(rows, key)
        if np.isfinite(values).any():
            losses.plot(epochs, values, marker="o", markersize=3, label=label)
    drawn = np.concatenate([line.get_ydata() for line in losses.get_lines()] or [[np.nan]])
    low, high = finite_range(drawn)
    if low > 0 and high > 10 * low:  # Log scale only where the losses span a decade or more.
        losses.set_yscale("log")
    losses.set(title="losses", xlabel="epoch", ylabel="loss (task units)")
    if monitor is not None and monitor_values is not None:
        watched.plot(
            epochs, monitor_values, marker="o", markersize=3, color="tab:green", label=monitor
        )
        watched.set(title=f"monitored: {monitor}", ylabel=f"{monitor} (validation)")
    else:
        watched.set(title="no monitored metric", ylabel="-")
    watched.set_xlabel("epoch")
    for ax in (losses, watched):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        mark_events(ax, events, steps_per_epoch)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def epoch_curves(
    rows: Sequence[Mapping[str, float]],
    series: Mapping[str, str],
    *,
    ylabel: str,
    title: str,
    reference: float | None = None,
) -> Figure:
    """Columns of `log.csv` over epochs, e.g. the std ratio or spread next to skill.

    Args:
      rows: `log.csv` rows.
      series: `{legend label: column}`.
      ylabel: the y-axis label with units.
      title: the figure title.
      reference: a horizontal dashed line (1 for a ratio that should be 1), or None.
    """
    figure = new_figure(5, 3.4)
    ax = figure.subplots()
    epochs = column(rows, "epoch")
    for label, key in series.items():
        ax.plot(epochs, column(rows, key), marker="o", markersize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="0.3", linestyle=":", label=f"ideal ({reference:g})")
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure


# ----------------------------------------------------------------------------- regression


def r_squared(pred: np.ndarray, true: np.ndarray) -> float:
    """`1 - sum((true - pred)^2) / sum((true - mean(true))^2)` over finite pairs; NaN if none."""
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    keep = np.isfinite(pred) & np.isfinite(true)
    pred, true = pred[keep], true[keep]
    total = np.sum((true - true.mean()) ** 2) if true.size else 0.0
    return float(1.0 - np.sum((true - pred) ** 2) / total) if total > 0 else math.nan


def pred_vs_true(
    pred: np.ndarray, true: np.ndarray, *, quantity: str, units: str, title: str
) -> Figure:
    """Scatter of `[N]` predictions against `[N]` truths with the 1:1 line and R² (finite pairs)."""
    figure = new_figure(4.2, 4.0)
    ax = figure.subplots()
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    keep = np.isfinite(pred) & np.isfinite(true)
    ax.scatter(true[keep], pred[keep], s=6, alpha=0.5, label=f"{keep.sum()} examples")
    low, high = finite_range(np.concatenate([pred[keep], true[keep]]), floor=1e-6)
    ax.plot([low, high], [low, high], color="0.2", linestyle="--", label="1:1")
    ax.set(
        title=f"{title}\nR² = {r_squared(pred, true):.3f}",
        xlabel=f"true {quantity} ({units})",
        ylabel=f"predicted {quantity} ({units})",
    )
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure


def value_histograms(
    pred: np.ndarray, true: np.ndarray, *, quantity: str, units: str, title: str, bins: int = 30
) -> Figure:
    """Histograms of the finite predictions and truths on shared bins, std of each in the legend."""
    figure = new_figure(4.8, 3.4)
    ax = figure.subplots()
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    pred, true = pred[np.isfinite(pred)], true[np.isfinite(true)]
    edges = np.linspace(*finite_range(np.concatenate([pred, true]), floor=1e-6), bins + 1)
    for values, name in ((true, "truth"), (pred, "prediction")):
        std = np.std(values) if values.size else math.nan  # A diverged model: no finite value.
        ax.hist(values, bins=edges, alpha=0.5, label=f"{name} (std {std:.3g})")
    ax.set(title=title, xlabel=f"{quantity} ({units})", ylabel="examples")
    ax.legend(fontsize="small")
    return figure


# ----------------------------------------------------------------------------- ensembles


def rank_histogram(shares: np.ndarray, *, title: str) -> Figure:
    """Bars of the `[M + 1]` rank shares of the truth among M members, the uniform share dashed."""
    shares = np.asarray(shares, np.float64)
    figure = new_figure(4.8, 3.4)
    ax = figure.subplots()
    ax.bar(np.arange(len(shares)), shares, color="tab:blue")
    ax.axhline(1.0 / len(shares), color="0.2", linestyle="--", label="calibrated (uniform)")
    ax.set(
        title=title,
        xlabel=f"rank of the truth among {len(shares) - 1} members",
        ylabel="share of pixels",
    )
    ax.legend(fontsize="small")
    return figure


def reliability_diagram(observed: np.ndarray, counts: np.ndarray, *, title: str) -> Figure:
    """Observed event frequency against the forecast probability `k / M` of each of M + 1 bins.

    Args:
      observed: `[M + 1]` observed frequency per bin (NaN for empty bins).
      counts: `[M + 1]` forecasts per bin, shown as bars on a second axis.
      title: the figure title.
    """
    observed, counts = np.asarray(observed, np.float64), np.asarray(counts, np.float64)
    forecast = np.arange(len(observed)) / max(len(observed) - 1, 1)
    figure = new_figure(4.4, 4.0)
    ax = figure.subplots()
    share = ax.twinx()
    share.bar(forecast, counts / max(counts.sum(), 1), width=0.6 / len(forecast), color="0.85")
    share.set_ylabel("share of forecasts")
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot([0, 1], [0, 1], color="0.2", linestyle="--", label="perfectly reliable")
    ax.plot(forecast, observed, marker="o", color="tab:red", label="ensemble")
    ax.set(
        title=title,
        xlabel="forecast probability (share of members)",
        ylabel="observed frequency",
        xlim=(-0.05, 1.05),
        ylim=(-0.05, 1.05),
    )
    ax.legend(fontsize="small", loc="upper left")
    return figure


# ----------------------------------------------------------------------------- images


def image_grid(
    rows: int,
    columns: int,
    *,
    tile: float = 1.5,
    extra_height: float = 1.1,
) -> tuple[Figure, np.ndarray]:
    """A figure of `rows x columns` image axes without ticks, room left for colorbars."""
    figure = new_figure(tile * columns + 0.6, tile * rows + extra_height)
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return figure, axes


def show_field(ax, field: np.ndarray, *, cmap: str, norm: colors.Normalize):
    """`imshow` of a `[H, W]` field, NaN and Inf grey; returns the image (for a colorbar)."""
    colour_map = colormaps[cmap].with_extremes(bad=BAD_COLOUR)
    masked = np.ma.masked_invalid(np.asarray(field, np.float64))
    return ax.imshow(masked, cmap=colour_map, norm=norm, interpolation="nearest")


def shared_colorbar(figure: Figure, image, axes, label: str) -> None:
    """One horizontal colorbar under `axes` for every panel drawn with `image`'s scale."""
    bar = figure.colorbar(
        image, ax=list(np.ravel(axes)), location="bottom", shrink=0.9, label=label
    )
    bar.ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=4))  # Narrow bars: few ticks.


def category_legend(ax, entries: Mapping[str, str], **kwargs) -> None:
    """A legend of coloured patches, `{label: colour}`, for categorical images and overlays."""
    handles = [patches.Patch(color=colour, label=label) for label, colour in entries.items()]
    ax.legend(handles=handles, fontsize="x-small", **kwargs)


def bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """Grouped bars: one group per label, one bar per series (`{legend: [len(labels)]}`)."""
    figure = new_figure(max(4.5, 0.9 * len(labels) + 2.5), 3.4)
    ax = figure.subplots()
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(
            np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width, values, width, label=name
        )
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return figure
