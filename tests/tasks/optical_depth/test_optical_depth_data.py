import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import r2_score

from jaxguard.tasks.optical_depth import data

SMALL = dict(num_train=6, num_val=4, num_test=5, frames=3, image_size=8, noise=0.1, seed=3)
# Many cheap sequences (one 4x4 frame each) for the target and oracle statistics.
LARGE = data.generate(
    num_train=6000, num_val=1, num_test=1, frames=1, image_size=4, noise=0.1, seed=11
)["train"]


def test_shapes_and_dtypes():
    splits = data.generate(**SMALL)
    assert set(splits) == {"train", "val", "test"}
    for name, n in (("train", 6), ("val", 4), ("test", 5)):
        split = splits[name]
        assert split["frames"].shape == (n, 3, 8, 8, 1)
        assert split["target"].shape == split["oracle"].shape == (n,)
        for array in split.values():
            assert array.dtype == np.float32
            assert np.all(np.isfinite(array))


def test_test_split_defaults_to_144_sequences():
    splits = data.generate(num_train=2, num_val=2, frames=1, image_size=4, noise=0.1, seed=0)
    assert splits["test"]["target"].shape == (144,)


def test_deterministic_for_a_seed_and_different_across_seeds():
    first, again = data.generate(**SMALL), data.generate(**SMALL)
    other = data.generate(**{**SMALL, "seed": 4})
    for name in first:
        for key in first[name]:
            np.testing.assert_array_equal(first[name][key], again[name][key])
    assert not np.allclose(first["train"]["target"], other["train"]["target"])


def test_test_split_does_not_depend_on_train_and_val_sizes():
    base = data.generate(**SMALL)["test"]
    resized = data.generate(**{**SMALL, "num_train": 9, "num_val": 1})["test"]
    for key in base:
        np.testing.assert_array_equal(base[key], resized[key])


def test_target_statistics_match_the_seed_runs():
    # Seed 000's test targets: range [0.15, 1.95], mean 0.937, std 0.483, right-skewed.
    target = LARGE["target"].astype(np.float64)
    assert target.min() == pytest.approx(data.TARGET_MIN)
    assert target.max() == pytest.approx(data.TARGET_MAX)
    assert target.mean() == pytest.approx(0.94, abs=0.03)
    assert target.std() == pytest.approx(0.48, abs=0.03)
    assert stats.skew(target) > 0.3


def test_oracle_r2_is_in_the_designed_band_and_matches_sklearn():
    value = data.oracle_r2(LARGE)
    assert 0.75 <= value <= 0.85
    assert value == pytest.approx(r2_score(LARGE["target"], LARGE["oracle"]), abs=1e-5)


def test_oracle_is_the_conditional_mean():
    # E[target - E[target | z]] = 0, and the residual is uncorrelated with any function of z.
    target = LARGE["target"].astype(np.float64)
    oracle = LARGE["oracle"].astype(np.float64)
    residual = target - oracle
    standard_error = residual.std() / np.sqrt(len(residual))
    assert abs(residual.mean()) < 4 * standard_error
    assert abs(np.corrcoef(residual, oracle)[0, 1]) < 0.05
    assert np.all((oracle >= data.TARGET_MIN) & (oracle <= data.TARGET_MAX))


def test_frames_carry_the_signal_and_vary_over_time():
    split = data.generate(
        num_train=400, num_val=1, num_test=1, frames=3, image_size=8, noise=0.1, seed=5
    )["train"]
    frames = split["frames"].astype(np.float64)
    brightness = frames.mean(axis=(1, 2, 3, 4))
    assert stats.spearmanr(brightness, split["oracle"]).statistic > 0.3
    # Each frame is a new noisy rendering, but of the same scene.
    first, second = frames[:, 0].reshape(400, -1), frames[:, 1].reshape(400, -1)
    assert not np.allclose(first, second)
    assert np.corrcoef(first.mean(1), second.mean(1))[0, 1] > 0.8


def test_zero_noise_is_allowed():
    split = data.generate(**{**SMALL, "noise": 0.0})["train"]
    assert np.all(np.isfinite(split["frames"]))


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("num_train", -1, ValueError),
        ("num_val", 0, ValueError),
        ("num_test", 0, ValueError),
        ("frames", 0, ValueError),
        ("image_size", 2, ValueError),
        ("noise", -0.1, ValueError),
        ("seed", -1, ValueError),
        ("num_val", 2.5, TypeError),
        ("frames", True, TypeError),
    ],
)
def test_bad_arguments_name_the_argument(name, value, error):
    with pytest.raises(error, match=f"`{name}`"):
        data.generate(**{**SMALL, name: value})


def test_oracle_r2_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="oracle_r2"):
        data.oracle_r2({"target": np.ones(4, np.float32), "oracle": np.ones(3, np.float32)})


# ----------------------------------------------------------------------------- zoo data variant
# The weak-signal ("faint") data variant behind the `collapse` configs (seed 000).

FAINT_SMALL = dict(num_train=40, num_val=8, num_test=8, frames=3, image_size=8, noise=0.3, seed=2)
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
    clear = data.generate(**FAINT_SMALL)
    faint = data.generate(**FAINT_SMALL, signal="faint")
    for name in clear:
        np.testing.assert_array_equal(clear[name]["frames"], faint[name]["frames"])
        assert not np.allclose(clear[name]["target"], faint[name]["target"])


def test_faint_targets_do_not_depend_on_frames_or_rendering():
    base = data.generate(**FAINT_SMALL, signal="faint")
    other = data.generate(
        **{**FAINT_SMALL, "frames": 7, "image_size": 12, "noise": 0.1}, signal="faint"
    )
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
        data.generate(**FAINT_SMALL, signal="dim")
