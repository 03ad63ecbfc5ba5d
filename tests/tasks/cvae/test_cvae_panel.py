"""The cVAE sample panel (`jaxguard/tasks/cvae/panel.py`) on a diverged model's samples."""

import numpy as np

from jaxguard.tasks.cvae import panel


def test_non_finite_samples_are_drawn_grey_and_the_panel_stays_finite():
    predictors = np.random.default_rng(0).random((1, 2, 2, 3))
    truth = np.full((1, 4, 4), 2.0)
    samples = np.full((1, 2, 4, 4), 2.0)
    samples[0, 1] = np.nan
    samples[0, 0, 0, 0] = np.inf
    image = panel.render_panel(predictors, truth, samples, threshold=50.0)
    assert image.shape[-1] == 3 and np.all(np.isfinite(image))
    assert np.all((image >= 0) & (image <= 1))
    # The all-NaN member and the Inf pixel are mid-grey; a finite field of the same row is not.
    grey = np.all(np.isclose(image.reshape(-1, 3), 0.5), axis=1)
    finite_only = panel.render_panel(predictors, truth, np.full((1, 2, 4, 4), 2.0), threshold=50.0)
    assert grey.sum() >= 17  # 16 NaN pixels and 1 Inf pixel, each drawn as a block.
    assert not np.any(np.all(np.isclose(finite_only.reshape(-1, 3), 0.5), axis=1))
    all_nan = panel.render_panel(predictors, None, np.full((1, 1, 4, 4), np.nan), threshold=50.0)
    assert np.all(np.isfinite(all_nan))
