"""Pictures of pointer predictions: the circles, the line and the caption at the right pixels."""

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

from jaxguard.tasks.pointer import coords, render

GREY = (50, 50, 50)


def _canvas(size=40):
    return np.zeros((size, size, 3), np.uint8)


def test_ring_covers_the_band_inside_the_radius():
    canvas = _canvas()
    render.draw_ring(canvas, (20, 20), 10, render.GREEN)
    drawn = np.all(canvas == render.GREEN, axis=-1)
    rows, columns = np.indices(drawn.shape)
    distance = np.hypot(columns - 20, rows - 20)
    np.testing.assert_array_equal(drawn, (distance <= 10) & (distance > 8))
    assert drawn[20, 30] and drawn[20, 29] and not drawn[20, 28] and not drawn[20, 20]


@settings(max_examples=50, deadline=None)
@given(st.tuples(*[st.integers(-5, 45)] * 4))
def test_bresenham_line_is_the_closest_8_connected_path(ends):
    c0, r0, c1, r1 = ends
    canvas = np.zeros((60, 60, 3), np.uint8)
    shift = 8  # Keep the whole line on the canvas to see every pixel.
    render.draw_line(canvas, (c0 + shift, r0 + shift), (c1 + shift, r1 + shift), render.YELLOW)
    rows, columns = np.nonzero(np.all(canvas == render.YELLOW, axis=-1))
    columns, rows = columns - shift, rows - shift
    major = max(abs(c1 - c0), abs(r1 - r0))
    assert len(columns) == major + 1  # one pixel per step along the major axis
    assert {(c0, r0), (c1, r1)} <= set(zip(columns.tolist(), rows.tolist(), strict=True))
    # Every pixel lies within half a pixel of the ideal line along the minor axis.
    if major:
        if abs(c1 - c0) >= abs(r1 - r0):
            ideal = r0 + (columns - c0) * (r1 - r0) / (c1 - c0)
            assert np.all(np.abs(rows - ideal) <= 0.5 + 1e-9)
        else:
            ideal = c0 + (rows - r0) * (c1 - c0) / (r1 - r0)
            assert np.all(np.abs(columns - ideal) <= 0.5 + 1e-9)


def test_line_by_hand_and_clipping():
    canvas = _canvas(10)
    render.draw_line(canvas, (0, 0), (5, 2), render.RED)
    drawn = sorted(zip(*np.nonzero(np.all(canvas == render.RED, -1))[::-1], strict=True))
    assert drawn == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    render.draw_line(canvas, (-20, 5), (30, 5), render.BLUE)  # off both edges: no error
    assert np.all(canvas[5] == render.BLUE)  # the whole visible row


def test_text_draws_the_glyph_bitmap():
    canvas = _canvas(12)
    render.draw_text(canvas, "7", (1, 1), render.WHITE, scale=2)
    drawn = np.all(canvas == render.WHITE, -1)
    glyph = np.array([[bit == "1" for bit in line] for line in ("111", "001", "001", "001", "001")])
    expected = np.zeros_like(drawn)
    expected[1:11, 1:7] = np.kron(glyph, np.ones((2, 2), bool))
    np.testing.assert_array_equal(drawn, expected)


def _example(done_true=0.0):
    size = (64, 64)
    image = np.full((*size, 1), 50, np.uint8)
    objects = coords.pixels_to_normalized(np.array([[5, 5], [10, 50], [20, 30]]), size)
    target = coords.pixels_to_normalized(np.array([20, 30]), size)
    pred = coords.pixels_to_normalized(np.array([40, 30]), size)
    return render.render_example(image, objects, 2, target, pred, done_true, 0.123)


def test_example_has_circles_line_marks_and_caption_in_place():
    picture = _example()
    radius = render.circle_radius((64, 64))
    assert picture.shape == (64 + render.caption_height(), 64, 3) and picture.dtype == np.uint8
    colour = {
        tuple(int(v) for v in picture[row, column]): (column, row)
        for row in range(64)
        for column in range(64)
    }
    assert set(colour) == {
        GREY,
        render.GREEN,
        render.RED,
        render.YELLOW,
        render.BLUE,
        render.MAGENTA,
    }
    # Ground truth at (20, 30): green ring; prediction at (40, 30): red ring; yellow between.
    for column, row in [(20 - radius, 30), (20, 30 - radius), (20, 30 + radius)]:
        assert tuple(picture[row, column]) == render.GREEN
    for column, row in [(40 + radius, 30), (40, 30 - radius), (40 - radius, 30)]:
        assert tuple(picture[row, column]) == render.RED
    assert np.all(picture[30, 20 + radius + 1 : 40 - radius] == render.YELLOW)
    assert tuple(picture[30, 20]) == render.YELLOW  # the line starts at the target centre
    # Marked objects: the first blue, the second (last marked) magenta; the third is unmarked.
    assert tuple(picture[5, 5]) == render.BLUE and tuple(picture[50, 10]) == render.MAGENTA
    assert tuple(picture[2, 60]) == GREY
    # Caption: "ERR=20PX" in yellow, its "E" starting at (2, 2) of the strip.
    assert render.caption_lines(20.0, 0.123, 0.0) == ("ERR=20PX", "DONE PRED=0.12 TRUE=0")
    strip = picture[64:]
    assert tuple(strip[2, 2]) == render.YELLOW and tuple(strip[2, 7]) == render.YELLOW
    assert np.any(np.all(strip == render.WHITE, -1))


def test_final_step_has_no_target_circle_nor_line():
    picture = _example(done_true=1.0)
    image = picture[:64]
    assert not np.any(np.all(image == render.GREEN, -1))
    assert not np.any(np.all(image == render.YELLOW, -1))
    assert np.any(np.all(image == render.RED, -1))
    assert render.caption_lines(np.nan, 0.9, 1.0) == ("ERR=-", "DONE PRED=0.90 TRUE=1")
