"""The surface task's figures: the boundary-rich patches chosen, the slice overlays (image,
truth, probability, errors) and the per-volume dice read from `volume_metrics.json`."""

import json

import numpy as np
from PIL import Image

from jaxguard import figures
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.surface import TASK, report


def _patches(rng, count=5, size=8):
    labels = np.zeros((count, size, size, size), np.float32)
    for k, fraction in enumerate((0.1, 0.45, 0.9, 0.55, 0.0)[:count]):
        labels[k, :, :, : round(fraction * size)] = 1.0
    volume = rng.random(labels.shape).astype(np.float32)
    logits = rng.normal(size=labels.shape).astype(np.float32)
    return volume, labels, logits


def test_boundary_patches_are_the_ones_nearest_half_foreground(rng):
    _, labels, _ = _patches(rng)
    fractions = labels.reshape(len(labels), -1).mean(axis=1)  # 0.125, 0.5, 0.875, 0.5, 0
    np.testing.assert_array_equal(report.boundary_patches(labels, 3), [1, 3, 0])
    assert np.all(np.abs(fractions[[1, 3]] - 0.5) <= np.abs(fractions[[0, 2, 4]] - 0.5).min())


def test_slice_overlays_show_the_middle_slice_with_error_categories(rng):
    volume, labels, logits = _patches(rng, count=2)
    figure = report.slice_overlays(volume, labels, logits, title="t")
    tiles = [ax for ax in figure.axes if ax.images]
    assert len(tiles) == 2 * 4
    shown_truth = tiles[1].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown_truth), labels[0, 4] >= 0.5)
    errors = np.asarray(tiles[3].images[0].get_array())
    predicted = logits[0, 4] > 0  # Probability above 1/2.
    np.testing.assert_array_equal(errors, 2 * (labels[0, 4] >= 0.5) + predicted)
    bars = [ax.get_xlabel() for ax in figure.axes if not ax.images and ax.get_xlabel()]
    assert bars == ["CT intensity (input units)", "papyrus (0 / 1)", "papyrus probability"]
    legend = tiles[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [n for n, _ in report.ERROR_CATEGORIES]


def test_images_and_run_figures_as_the_harness_gets_them(tmp_path, rng):
    assert TASK.images is report.images and TASK.figures is report.run_figures
    volume, labels, logits = _patches(rng)
    outputs, batch = {"logits": logits}, {"volume": volume, "labels": labels}
    [(tag, image)] = report.images(outputs, batch).items()
    assert tag == "val/slices" and image.dtype == np.uint8 and image.shape[-1] == 3
    summary = RunSummary(
        str(tmp_path), "surface", None, 0, None, 1, 1, 1.0, 1, None, {}, ({"epoch": 0},)
    )
    assert list(report.run_figures(None, None, summary, outputs, batch)) == ["slices"]
    volumes = [{"dice": 0.8, "all_foreground_dice": 0.7, "cldice": 0.9}] * 2
    (tmp_path / "volume_metrics.json").write_text(json.dumps({"volumes": volumes}))
    drawn = report.run_figures(None, None, summary, outputs, batch)
    assert list(drawn) == ["slices", "volume_dice"]
    heights = [p.get_height() for p in drawn["volume_dice"].axes[0].patches]
    np.testing.assert_allclose(heights, [0.8, 0.8, 0.7, 0.7, 0.9, 0.9])
    for name, figure in drawn.items():
        path = figures.save_png(figure, str(tmp_path / f"{name}.png"))
        with Image.open(path) as decoded:
            width, height = figure.get_size_inches() * figures.DPI
            assert (decoded.format, decoded.size) == ("PNG", (int(width), int(height)))
