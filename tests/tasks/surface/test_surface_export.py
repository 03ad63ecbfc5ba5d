"""Whole-volume figures of the surface task's export (`jaxguard/tasks/surface/export.py`).

The export itself (sliding-window inference, written masks and `volume_metrics.json`) is
checked against a recount in test_surface_train.py.
"""

import numpy as np
import pytest

from jaxguard.tasks.surface import export


def test_volume_figures_count_six_connected_components():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:3] = 1
    truth[5:7] = 1  # two sheets
    predicted = truth.copy()
    predicted[5:7, :, 4] = 0  # the second sheet cut in two
    predicted[4, 0, 0] = 1  # a speck touching the second sheet's first half: joins it
    predicted[3, 4, 4] = 1  # a speck touching the first sheet: joins it
    figures = export.volume_figures(predicted, truth, iterations=2)
    assert figures["components_true"] == 2
    assert figures["components_pred"] == 3
    expected_dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum())
    assert figures["dice"] == pytest.approx(expected_dice)
    assert figures["all_foreground_dice"] == pytest.approx(2 * 0.5 / 1.5)
