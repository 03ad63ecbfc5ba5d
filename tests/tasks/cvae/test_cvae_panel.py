"""The cVAE sample panel (`jaxguard/tasks/cvae/panel.py`): one precipitation scale across the
panel, one per predictor channel, the extreme contour, and a diverged model's samples."""

import math

import numpy as np
from PIL import Image

from jaxguard import figures
from jaxguard.tasks.cvae import panel


def _arrays(members=2):
    rng = np.random.default_rng(0)
    predictors = rng.random((2, 2, 2, 3))
    truth = np.minimum(rng.gamma(0.5, 10.0, (2, 4, 4)), 40.0)  # Below the 50 mm/day threshold.
    samples = np.minimum(rng.gamma(0.5, 10.0, (2, members, 4, 4)), 40.0)
    return predictors, truth, samples


def test_precipitation_shares_one_scale_and_each_predictor_has_its_own():
    predictors, truth, samples = _arrays()
    truth[1, 0, 0] = 60.0  # One extreme pixel: the contour and the top of the shared scale.
    figure = panel.panel_figure(predictors, truth, samples, threshold=50.0, title="t")
    images = [ax.images[0] for ax in figure.axes if ax.images]
    assert len(images) == 2 * (3 + 1 + 2)
    rain = [im for im in images if im.cmap.name.startswith("Blues")]
    assert len(rain) == 2 * 3 and all(im.norm is rain[0].norm for im in rain)
    assert (rain[0].norm.vmin, rain[0].norm.vmax) == (0.0, 60.0)
    for channel in range(3):
        shown = [im for im in images if im.get_array().shape == (2, 2)][channel::3]
        assert shown[0].norm is shown[1].norm
        assert shown[0].norm.vmax == predictors[..., channel].max()
    labels = [ax.get_xlabel() for ax in figure.axes if ax.get_xlabel()]
    assert labels == [
        *(f"predictor {c}\n(input units)" for c in range(3)),
        "precipitation (mm/day, square-root scale)",
    ]
    contoured = [ax for ax in figure.axes if ax.images and ax.collections]
    assert len(contoured) == 1  # Only the truth tile that holds the extreme pixel.
    assert figure.get_suptitle() == "t; red contour: > 50 mm/day"


def test_non_finite_samples_are_masked_and_the_panel_still_draws(tmp_path):
    predictors, truth, samples = _arrays()
    samples[0, 1] = np.nan
    samples[0, 0, 0, 0] = np.inf
    figure = panel.panel_figure(predictors, truth, samples, threshold=50.0, title="t")
    masked = [ax.images[0].get_array() for ax in figure.axes if ax.images]
    assert any(np.ma.getmaskarray(m).all() for m in masked)  # The all-NaN member: all grey.
    finite_max = max(np.nanmax(truth), np.max(samples[np.isfinite(samples)]))
    rain = [
        ax.images[0] for ax in figure.axes if ax.images and ax.images[0].get_array().shape == (4, 4)
    ]
    assert rain[0].norm.vmax == finite_max
    figures.save_png(figure, str(tmp_path / "nan.png"))
    all_nan = panel.panel_figure(
        predictors[:1], None, np.full((1, 1, 4, 4), np.nan), threshold=math.inf, title="t"
    )
    assert all_nan.get_suptitle() == "t"  # No threshold: no contour note.
    figures.save_png(all_nan, str(tmp_path / "all_nan.png"))
    with Image.open(tmp_path / "all_nan.png") as image:
        width, height = all_nan.get_size_inches() * figures.DPI
        assert image.size == (int(width), int(height))


def test_write_ensemble_writes_the_npz_and_a_png_of_the_panel(tmp_path):
    predictors, truth, samples = _arrays(members=3)
    png_path, npz_path = panel.write_ensemble(
        str(tmp_path),
        predictors=predictors,
        truth=truth,
        samples=samples,
        indices=np.array([4, 7]),
        threshold=50.0,
    )
    with np.load(npz_path) as saved:
        np.testing.assert_array_equal(saved["samples"], samples)
    expected = panel.panel_figure(predictors, truth, samples, threshold=50.0, title="t")
    with Image.open(png_path) as image:
        width, height = expected.get_size_inches() * figures.DPI
        assert (image.format, image.size) == ("PNG", (int(width), int(height)))
