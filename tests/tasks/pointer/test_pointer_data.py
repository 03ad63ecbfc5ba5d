"""Embedded generator and mixed-mode examples of the pointer task (`data.py`)."""

import hashlib

import numpy as np
import pytest

from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords, data

_SMALL = dict(
    num_train=40,
    num_val=20,
    num_test=20,
    image_size=64,
    objects_min=3,
    objects_max=6,
    object_radius=2.0,
    noise=0.05,
    done_fraction=0.25,
    examples_per_image=1,
    seed=3,
)


@pytest.fixture(scope="module")
def small_splits():
    return data.generate(**_SMALL)


def test_examples_are_consistent_mixed_mode_steps(small_splits):
    for split in small_splits.values():
        n = len(split["done"])
        done = split["done"] == 1
        assert done.sum() == round(0.25 * n)
        np.testing.assert_array_equal(split["num_marked"][done], split["num_objects"][done])
        assert np.all(split["num_marked"][~done] < split["num_objects"][~done])
        assert np.all(np.isnan(split["target_xy"][done]))
        for i in np.flatnonzero(~done):
            np.testing.assert_array_equal(
                split["target_xy"][i], split["objects"][i, split["num_marked"][i]]
            )
        for i in range(n):
            assert np.all(split["objects"][i, split["num_objects"][i] :] == 0)
        assert split["image"].shape == (n, 64, 64, 1) and split["image"].dtype == np.uint8


def test_objects_follow_a_nearest_neighbour_tour_inside_the_image(small_splits):
    split = small_splits["train"]
    for i in range(len(split["done"])):
        xy = split["objects"][i, : split["num_objects"][i]].astype(np.float64)
        assert np.all((xy > 0) & (xy < 1))
        current, remaining = np.zeros(2), list(range(len(xy)))
        for visited in range(len(xy)):
            # Reference: the nearest object not yet visited (the tour starts at the corner).
            nearest = min(remaining, key=lambda j: np.hypot(*(xy[j] - current)))
            assert nearest == visited
            remaining.remove(nearest)
            current = xy[nearest]
        pixels = coords.normalized_to_pixels(xy, (64, 64))
        gaps = np.hypot(*(pixels[:, None] - pixels[None]).transpose(2, 0, 1))
        assert gaps[np.triu_indices(len(xy), 1)].min() >= 3 * 2.0  # three radii apart
        # Each object is a bright disc over a background of about 0.1 * 255.
        columns, rows = np.rint(pixels).astype(int).T
        assert np.all(split["image"][i, rows, columns, 0] > 80)


def test_generator_is_deterministic_and_the_test_split_independent_of_train_size():
    again = data.generate(**_SMALL)
    bigger = data.generate(**{**_SMALL, "num_train": 50})
    reference = data.generate(**_SMALL)
    for key in ("image", "objects", "num_marked", "target_xy", "done"):
        np.testing.assert_array_equal(again["train"][key], reference["train"][key])
        np.testing.assert_array_equal(bigger["test"][key], reference["test"][key])


def test_default_scenes_hold_about_21_objects_and_3_percent_done():
    splits = data.generate(
        num_train=120,
        num_val=100,
        num_test=1,
        image_size=384,
        objects_min=12,
        objects_max=30,
        object_radius=6.0,
        noise=0.05,
        done_fraction=0.03,
        examples_per_image=1,
        seed=0,
    )
    assert 19.5 < splits["train"]["num_objects"].mean() < 22.5
    assert splits["val"]["done"].mean() == pytest.approx(0.03)


def test_generator_rejects_settings_that_cannot_work():
    with pytest.raises(ConfigError, match="data.objects_min"):
        data.generate(**{**_SMALL, "objects_min": 7})
    with pytest.raises(ConfigError, match="do not fit"):
        data.generate(**{**_SMALL, "objects_max": 60, "objects_min": 50})
    with pytest.raises(ConfigError, match="data.done_fraction"):
        data.generate(**{**_SMALL, "done_fraction": 1.5})


# ----------------------------------------------------------------------------- zoo data variant
# The annotator's tour of the embedded generator (`data.detour_rate`, zoo variants).

_TOUR_SMALL = dict(
    num_train=60,
    num_val=10,
    num_test=10,
    image_size=64,
    objects_min=6,
    objects_max=8,
    object_radius=2.0,
    noise=0.05,
    done_fraction=0.25,
    examples_per_image=1,
    seed=5,
)


def _step_ranks(xy: np.ndarray) -> list[int]:
    """Per tour step with two or more objects left: the rank (0 nearest) of the object taken."""
    current, remaining, ranks = np.zeros(2), list(range(len(xy))), []
    for visited in range(len(xy)):
        distances = [np.hypot(*(xy[j] - current)) for j in remaining]
        if len(remaining) > 1:
            ranks.append(
                int(np.argsort(distances, kind="stable").tolist().index(remaining.index(visited)))
            )
        remaining.remove(visited)
        current = xy[visited]
    return ranks


# sha256 of the `_TOUR_SMALL` splits (every split, keys sorted, raw bytes) made by the generator as
# it was before `detour_rate` existed (commit e3dc2a9).
_DIGEST_BEFORE_DETOURS = "b98d9e37f0fcdff9b1a5396f615b283b3a91cc66a04bbf05004204ef750623b3"


def test_zero_detour_rate_leaves_the_splits_bit_for_bit_unchanged():
    digest = hashlib.sha256()
    splits = data.generate(**_TOUR_SMALL, detour_rate=0.0)
    for name in data.SPLITS:
        for key in sorted(splits[name]):
            digest.update(np.ascontiguousarray(splits[name][key]).tobytes())
    assert digest.hexdigest() == _DIGEST_BEFORE_DETOURS


def test_detours_go_to_the_second_nearest_object_at_the_set_rate():
    split = data.generate(**_TOUR_SMALL, detour_rate=0.4)["train"]
    ranks = np.array(
        [
            rank
            for i in range(len(split["done"]))
            for rank in _step_ranks(split["objects"][i, : split["num_objects"][i]])
        ]
    )
    assert set(ranks.tolist()) <= {0, 1}  # Nearest or second-nearest, never further.
    # About 60 images x 6 steps: 0.4 within four binomial standard deviations.
    assert abs(ranks.mean() - 0.4) < 4 * np.sqrt(0.4 * 0.6 / len(ranks))


def test_the_tour_without_detours_is_nearest_neighbour_every_step():
    split = data.generate(**_TOUR_SMALL)["train"]
    for i in range(len(split["done"])):
        assert _step_ranks(split["objects"][i, : split["num_objects"][i]]) == [0] * (
            split["num_objects"][i] - 1
        )


@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan")])
def test_a_detour_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ConfigError, match="data.detour_rate"):
        data.generate(**_TOUR_SMALL, detour_rate=rate)
