"""The shared figures: each written as a PNG that Pillow decodes at figsize x DPI pixels, with
titles, labels and colorbars present; R² against NumPy's correlation; events on the x-axis."""

import math
import os
import warnings

import numpy as np
import pytest
from matplotlib import colors
from PIL import Image

from jaxguard import figures


def _decoded_size(figure, path):
    figures.save_png(figure, str(path))
    with Image.open(path) as image:
        image.load()
        return image.format, image.size


def _expected_size(figure):
    width, height = figure.get_size_inches()
    return int(width * figures.DPI), int(height * figures.DPI)  # Agg truncates.


def _rows(epochs=5):
    return [
        {"epoch": e, "train_loss": 10.0**-e, "val_loss": 1.5 * 10.0**-e, "val_r2": e / 10}
        for e in range(epochs)
    ]


def _all_figures(rng):
    pred, true = rng.normal(size=50), rng.normal(size=50)
    events = [{"guard": "collapse", "level": "warn", "step": 30}]
    fields = rng.gamma(0.5, 10.0, (2, 6, 6))
    return {
        "learning_curves": figures.learning_curves(
            _rows(),
            events,
            steps_per_epoch=10,
            monitor="r2",
            monitor_values=np.arange(5) / 10,
            title="toy",
        ),
        "epoch_curves": figures.epoch_curves(
            _rows(), {"r2": "val_r2"}, ylabel="R²", title="R²", reference=1.0
        ),
        "pred_vs_true": figures.pred_vs_true(pred, true, quantity="x", units="m", title="x"),
        "histograms": figures.value_histograms(pred, true, quantity="x", units="m", title="x"),
        "rank_histogram": figures.rank_histogram(np.full(5, 0.2), title="ranks"),
        "reliability": figures.reliability_diagram(
            np.array([0.0, 0.3, np.nan, 1.0]), np.array([10, 5, 0, 2]), title="reliability"
        ),
        "bars": figures.bars(["a", "b"], {"s": [0.5, 0.7]}, ylabel="dice", title="dice"),
        "grid": _grid(fields),
    }


def _grid(fields):
    figure, axes = figures.image_grid(1, 2)
    norm = colors.Normalize(*figures.finite_range(fields))
    for ax, field in zip(axes[0], fields, strict=True):
        image = figures.show_field(ax, field, cmap="Blues", norm=norm)
    figures.shared_colorbar(figure, image, axes, "rain (mm/day)")
    figure.suptitle("grid")
    return figure


def test_every_figure_is_a_png_of_its_figure_size_with_a_title(tmp_path, rng):
    for name, figure in _all_figures(rng).items():
        assert _decoded_size(figure, tmp_path / f"{name}.png") == ("PNG", _expected_size(figure))
        titles = [ax.get_title() for ax in figure.axes] + [
            figure.get_suptitle() if hasattr(figure, "get_suptitle") else ""
        ]
        assert any(titles), name
        labelled = [ax for ax in figure.axes if ax.get_xlabel() or ax.get_ylabel()]
        assert labelled, f"{name}: no axis label"
        assert os.path.getsize(tmp_path / f"{name}.png") < 80_000


def test_to_rgb_renders_the_figure_size_and_write_figures_logs_each_one(tmp_path, rng):
    drawn = {"a": figures.rank_histogram(np.full(3, 1 / 3), title="a")}
    logged = []

    class Recorder:
        def write_images(self, step, images):
            logged.append((step, {k: v.shape for k, v in images.items()}))

    paths = figures.write_figures(str(tmp_path), drawn, Recorder(), step=7)
    width, height = _expected_size(drawn["a"])
    assert paths == [str(tmp_path / "figures" / "a.png")]
    assert logged == [(7, {"figures/a": (height, width, 3)})]
    with Image.open(paths[0]) as image:
        assert (image.format, image.size) == ("PNG", (width, height))
    rgb = figures.to_rgb(drawn["a"])
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 2  # Something is drawn, not a blank.


def test_a_shared_colorbar_holds_every_panel_of_one_quantity(rng):
    figure = _grid(rng.gamma(0.5, 10.0, (2, 6, 6)))
    images = [ax.images[0] for ax in figure.axes if ax.images]
    assert len(images) == 2 and images[0].norm is images[1].norm
    colorbars = [ax for ax in figure.axes if ax.get_xlabel() == "rain (mm/day)"]
    assert len(colorbars) == 1


def test_non_finite_fields_and_empty_values_still_draw(tmp_path):
    field = np.full((4, 4), np.nan)
    field[0, 0] = np.inf
    figure, axes = figures.image_grid(1, 1)
    norm = colors.Normalize(*figures.finite_range(field))
    assert figures.finite_range(field) == (0.0, 1.0)
    figures.show_field(axes[0, 0], field, cmap="Blues", norm=norm)
    assert _decoded_size(figure, tmp_path / "nan.png")[0] == "PNG"
    nan = np.full(5, np.nan)
    scatter = figures.pred_vs_true(nan, nan, quantity="x", units="m", title="all NaN")
    assert "R² = nan" in scatter.axes[0].get_title()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No NumPy warning about empty arrays either.
        histograms = figures.value_histograms(nan, np.ones(5), quantity="x", units="m", title="t")
    labels = histograms.axes[0].get_legend_handles_labels()[1]
    assert labels == ["truth (std 0)", "prediction (std nan)"]


def test_r_squared_matches_the_definition_on_finite_pairs(rng):
    true = rng.normal(size=200)
    pred = true + 0.5 * rng.normal(size=200)
    expected = 1 - np.sum((true - pred) ** 2) / np.sum((true - true.mean()) ** 2)
    assert figures.r_squared(pred, true) == pytest.approx(expected)
    # The least-squares line's R² is the squared correlation.
    slope, intercept = np.polyfit(true, pred, 1)
    fitted = slope * true + intercept
    assert figures.r_squared(fitted, pred) == pytest.approx(np.corrcoef(true, pred)[0, 1] ** 2)
    with_nan = np.append(pred, np.nan)
    assert figures.r_squared(with_nan, np.append(true, 1.0)) == pytest.approx(expected)
    assert math.isnan(figures.r_squared(np.ones(3), np.ones(3)))


def test_learning_curves_mark_each_event_at_its_epoch_and_name_each_guard_once():
    events = [
        {"guard": "collapse", "level": "warn", "step": 30},
        {"guard": "collapse", "level": "warn", "step": 45},
        {"guard": "early_stopping", "level": "stop", "step": 50},
    ]
    figure = figures.learning_curves(
        _rows(), events, steps_per_epoch=10, monitor=None, monitor_values=None, title="t"
    )
    losses, watched = figure.axes[:2]
    vertical = [line.get_xdata()[0] for line in losses.get_lines() if line.get_linestyle() == "--"]
    assert vertical == [2.0, 3.5, 4.0]  # step / steps_per_epoch - 1
    labels = losses.get_legend_handles_labels()[1]
    assert labels == [
        "train loss",
        "validation loss",
        "collapse (warn)",
        "early_stopping (stop)",
    ]
    assert losses.get_yscale() == "log" and watched.get_title() == "no monitored metric"
    flat = [{**row, "train_loss": 1.0, "val_loss": 2.0} for row in _rows()]
    figure = figures.learning_curves(
        flat, [], steps_per_epoch=10, monitor=None, monitor_values=None, title="t"
    )
    assert figure.axes[0].get_yscale() == "linear"  # Less than a decade: linear.


def test_log_cells_read_as_floats():
    assert figures.as_float("0.5") == 0.5
    assert all(math.isnan(figures.as_float(v)) for v in ("", None, "n/a"))
    np.testing.assert_array_equal(
        figures.column([{"a": 1.0}, {}, {"a": "2"}], "a"), [1.0, np.nan, 2.0]
    )
