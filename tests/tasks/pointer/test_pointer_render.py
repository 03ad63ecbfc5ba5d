"""Pictures of pointer predictions: the circles, the line and the marks at the right pixels,
one legend and one intensity colorbar, and a PNG of the figure's size."""

import numpy as np
from PIL import Image

from jaxguard import figures
from jaxguard.tasks.pointer import coords, render

SIZE = (64, 64)


def _example(done_true=0.0, pred_px=(40, 30)):
    """One example: objects at pixels (5, 5), (10, 50), (20, 30), two marked; next (20, 30)."""
    objects = coords.pixels_to_normalized(np.array([[5, 5], [10, 50], [20, 30]]), SIZE)
    batch = {
        "image": np.full((1, *SIZE, 1), 50, np.uint8),
        "objects": objects[None],
        "num_marked": np.array([2]),
        "target_xy": coords.pixels_to_normalized(np.array([[20, 30]]), SIZE),
        "done": np.array([done_true]),
    }
    outputs = {
        "xy": coords.pixels_to_normalized(np.array([pred_px], np.float64), SIZE),
        "done_prob": np.array([0.123]),
    }
    return outputs, batch


def _circles(ax):
    return {p.get_label(): p for p in ax.patches}


def test_example_has_circles_line_and_marks_in_place():
    figure = render.overlay_figure(*_example(), [0], title="t")
    ax = figure.axes[0]
    circles = _circles(ax)
    radius = render.circle_radius(SIZE)
    np.testing.assert_allclose(circles["true next"].center, (20, 30), atol=1e-9)
    np.testing.assert_allclose(circles["predicted"].center, (40, 30), atol=1e-9)
    assert circles["true next"].radius == radius == circles["predicted"].radius
    [line] = ax.get_lines()
    np.testing.assert_allclose(np.stack(line.get_data(), axis=1), [[20, 30], [40, 30]])
    marks = {c.get_label(): c.get_offsets().data for c in ax.collections}
    np.testing.assert_allclose(marks["marked objects"], [[5, 5]])
    np.testing.assert_allclose(marks["last marked"], [[10, 50]])  # The third is not marked.
    assert ax.get_title() == "error 20 px, done p 0.12 (true 0)"
    [legend] = figure.legends
    assert {t.get_text() for t in legend.get_texts()} == {
        "marked objects",
        "last marked",
        "true next",
        "predicted",
    }
    assert figure.axes[-1].get_xlabel() == "pixel intensity (0-255)"  # The shared colorbar.


def test_final_step_has_no_target_circle_nor_line():
    figure = render.overlay_figure(*_example(done_true=1.0), [0], title="t")
    ax = figure.axes[0]
    assert set(_circles(ax)) == {"predicted"} and not ax.get_lines()
    assert ax.get_title() == "error -, done p 0.12 (true 1)"


def test_a_wild_prediction_keeps_the_image_in_view(tmp_path):
    figure = render.overlay_figure(*_example(pred_px=(1e6, -1e6)), [0], title="t")
    ax = figure.axes[0]
    assert ax.get_xlim() == (-0.5, 63.5) and ax.get_ylim() == (63.5, -0.5)
    figures.save_png(figure, str(tmp_path / "wild.png"))
    with Image.open(tmp_path / "wild.png") as image:
        width, height = figure.get_size_inches() * figures.DPI
        assert image.size == (int(width), int(height))


def test_caption_and_circle_radius():
    assert render.caption(23.4, 0.5, 0.0) == "error 23 px, done p 0.50 (true 0)"
    assert render.circle_radius((384, 384)) == 10 and render.circle_radius((32, 64)) == 3
