"""The weak-signal ("faint") data variant behind the `collapse` configs (seed 000)."""

import numpy as np
import pytest
from scipy import stats

from jaxguard.tasks.optical_depth import data

SMALL = dict(num_train=40, num_val=8, num_test=8, frames=3, image_size=8, noise=0.3, seed=2)
# Many cheap sequences (one 4x4 frame each) for the target statistics.
FAINT = data.generate(
    num_train=20000,
    num_val=1,
    num_test=1,
    frames=1,
    image_size=4,
    noise=0.1,
    seed=7,
    signal="faint",
)["train"]


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def test_faint_keeps_the_frames_and_changes_the_targets():
    clear = data.generate(**SMALL)
    faint = data.generate(**SMALL, signal="faint")
    for name in clear:
        np.testing.assert_array_equal(clear[name]["frames"], faint[name]["frames"])
        assert not np.allclose(clear[name]["target"], faint[name]["target"])


def test_faint_targets_do_not_depend_on_frames_or_rendering():
    base = data.generate(**SMALL, signal="faint")
    other = data.generate(**{**SMALL, "frames": 7, "image_size": 12, "noise": 0.1}, signal="faint")
    for name in base:
        np.testing.assert_array_equal(base[name]["target"], other[name]["target"])


def test_faint_target_is_a_right_skewed_mode_with_a_tail():
    target = FAINT["target"].astype(np.float64)
    assert target.min() == pytest.approx(data.TARGET_MIN)
    assert target.max() == pytest.approx(data.TARGET_MAX)
    assert np.median(target) == pytest.approx(0.70, abs=0.02)
    assert target.mean() - np.median(target) > 0.04
    assert stats.skew(target) > 1.5
    # Most sequences sit at the haze mode; about a third are clouds.
    assert 0.6 <= np.mean(np.abs(target - 0.7) < 0.15) <= 0.75


def test_faint_signal_is_weak_but_present():
    assert 0.25 <= data.oracle_r2(FAINT) <= 0.40


def test_faint_conditional_median_stays_at_the_mode_while_the_mean_moves():
    # Sequences binned by their oracle: the weighted median (MAE with 1.5x weights above 1.2,
    # seed 000's loss) moves far less across bins than the mean (MSE's optimum) does.
    target, oracle = FAINT["target"].astype(np.float64), FAINT["oracle"].astype(np.float64)
    bins = np.quantile(oracle, [0.0, 0.2, 0.8, 1.0])
    low, high = (target[(oracle >= a) & (oracle <= b)] for a, b in (bins[:2], bins[2:]))
    weights = [np.where(part > 1.2, 1.5, 1.0) for part in (low, high)]
    median_shift = _weighted_median(high, weights[1]) - _weighted_median(low, weights[0])
    mean_shift = high.mean() - low.mean()
    assert mean_shift > 0.4
    assert median_shift < 0.25 * mean_shift


def test_faint_oracle_is_the_conditional_mean():
    residual = (FAINT["target"] - FAINT["oracle"]).astype(np.float64)
    assert abs(residual.mean()) < 4 * residual.std() / np.sqrt(len(residual))
    assert abs(np.corrcoef(residual, FAINT["oracle"])[0, 1]) < 0.05


def test_unknown_signal_names_the_argument():
    with pytest.raises(ValueError, match="`signal`"):
        data.generate(**SMALL, signal="dim")
