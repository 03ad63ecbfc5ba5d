"""The optical-depth task's figures: the TensorBoard scatter each evaluation, and the test
scatter, histograms and std ratio at the end, as the harness writes them."""

import dataclasses

import numpy as np
from PIL import Image

from jaxguard import figures
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.optical_depth import TASK, report


def _summary(workdir):
    history = tuple({"epoch": e, "val_std_ratio": 0.2 * (e + 1)} for e in range(4))
    return RunSummary(
        workdir=str(workdir),
        task="optical_depth",
        stopped_by=None,
        best_epoch=3,
        best_monitor=None,
        epochs_run=4,
        steps_per_epoch=5,
        train_seconds=1.0,
        param_count=10,
        pretrain=None,
        test={},
        history=history,
    )


def test_the_task_declares_its_figure_hooks():
    assert TASK.images is report.images and TASK.figures is report.run_figures


def test_images_give_the_validation_scatter_as_one_rgb_image(rng):
    pred, target = rng.normal(size=40), rng.normal(size=40)
    [(tag, image)] = report.images({"pred": pred}, {"target": target}).items()
    assert tag == "val/pred_vs_true" and image.dtype == np.uint8 and image.shape[-1] == 3


def test_run_figures_scatter_with_r2_histograms_and_std_ratio(tmp_path, rng):
    target = rng.normal(size=100)
    pred = 0.5 * target + 0.1 * rng.normal(size=100)  # A half-collapsed model.
    drawn = report.run_figures(None, None, _summary(tmp_path), {"pred": pred}, {"target": target})
    assert list(drawn) == ["pred_vs_true", "histograms", "std_ratio"]
    scatter = drawn["pred_vs_true"].axes[0]
    assert f"R² = {figures.r_squared(pred, target):.3f}" in scatter.get_title()
    assert scatter.get_xlabel() == "true optical depth (dimensionless)"
    [ratio] = [line for line in drawn["std_ratio"].axes[0].get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(ratio.get_ydata(), [0.2, 0.4, 0.6, 0.8])
    paths = figures.write_figures(str(tmp_path), drawn, _NoImages(), step=1)
    for path, fig in zip(paths, drawn.values(), strict=True):
        with Image.open(path) as image:
            width, height = fig.get_size_inches() * figures.DPI
            assert (image.format, image.size) == ("PNG", (int(width), int(height)))


@dataclasses.dataclass
class _NoImages:
    def write_images(self, step, images):
        del step, images
