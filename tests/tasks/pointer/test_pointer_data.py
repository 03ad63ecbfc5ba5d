"""Embedded generator and user-data loader of the pointer task."""

import json

import numpy as np
import pytest

from jaxguard.config import ConfigError
from jaxguard.png import write_png
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


# ----------------------------------------------------------------------------- user data


def _write_images(folder, names, size=(20, 30), colour=None):
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        if colour is not None:
            image[...] = colour
        write_png(str(folder / name), image)


def _load(path, **overrides):
    settings = dict(
        val_fraction=0.2, test_fraction=0.2, done_fraction=0.0, examples_per_image=3, seed=0
    )
    return data.load_folder(str(path), **{**settings, **overrides})


def test_loads_csv_and_json_with_the_same_result(tmp_path):
    names = [f"img{i}.png" for i in range(5)]
    _write_images(tmp_path, names)
    points = {name: [[1.0 + i, 2.0], [29.0, 19.0 - i], [0.0, 0.0]] for i, name in enumerate(names)}
    (tmp_path / "objects.json").write_text(json.dumps(points))
    rows = ["image,column,row"] + [
        f"{name},{c},{r}" for name, pts in points.items() for c, r in pts
    ]
    (tmp_path / "objects.csv").write_text("\n".join(rows) + "\n")
    from_json, from_csv = _load(tmp_path / "objects.json"), _load(tmp_path / "objects.csv")
    for name in data.SPLITS:
        for key in from_json[name]:
            np.testing.assert_array_equal(from_json[name][key], from_csv[name][key])
    ids = {name: set(from_json[name]["image_id"]) for name in data.SPLITS}
    assert sum(len(v) for v in ids.values()) == 5 and not ids["train"] & ids["test"]
    train = from_json["train"]
    assert len(train["done"]) == 3 * len(ids["train"])  # examples_per_image copies
    i = 0
    expected = coords.pixels_to_normalized(np.array(points[names[train["image_id"][i]]]), (20, 30))
    np.testing.assert_allclose(train["objects"][i], expected, rtol=1e-6)
    np.testing.assert_allclose(train["target_xy"][i], expected[train["num_marked"][i]], rtol=1e-6)
    assert data.source_image_size(str(tmp_path / "objects.csv")) == (20, 30)


def test_colour_images_become_grey(tmp_path):
    names = ["a.png", "b.png", "c.png"]
    _write_images(tmp_path, names, colour=(255, 0, 0))
    (tmp_path / "o.json").write_text(json.dumps({n: [[3, 4]] for n in names}))
    split = _load(tmp_path / "o.json", examples_per_image=1, val_fraction=0.3, test_fraction=0.3)
    assert split["train"]["image"].shape[1:] == (20, 30, 1)
    assert np.all(split["train"]["image"] == round(255 * 0.299))  # ITU-R 601 luma of red


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"a.png": [[3, 4]], "b.png": [[30, 4]], "c.png": [[1, 1]]},
            r"image b.png object 0 at \(column 30, row 4\) lies outside the 30 x 20 image",
        ),
        ({"a.png": [[3, 4]], "b.png": [], "c.png": [[1, 1]]}, "image b.png has an empty object"),
        ({"a.png": [[3, 4]], "gone.png": [[1, 1]], "c.png": [[1, 1]]}, "image gone.png not found"),
        ({"a.png": [[3, 4]], "c.png": [[1, 1]]}, "2 image.s. listed"),
    ],
)
def test_bad_user_data_fails_with_the_file_named(tmp_path, table, message):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "objects.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path / "objects.json")


def test_bad_csv_files(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    empty = tmp_path / "empty.csv"
    empty.write_text("image,column,row\na.png,1,1\nb.png,,\nc.png,2,2\n")
    with pytest.raises(ConfigError, match="image b.png has an empty object list"):
        _load(empty)
    wrong_header = tmp_path / "header.csv"
    wrong_header.write_text("file,x,y\na.png,1,1\n")
    with pytest.raises(ConfigError, match="lacks column.s. column, image, row"):
        _load(wrong_header)
    with pytest.raises(ConfigError, match="no such file"):
        _load(tmp_path / "missing.csv")


def test_images_of_different_sizes_are_refused(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    _write_images(tmp_path, ["c.png"], size=(21, 30))
    (tmp_path / "o.json").write_text(json.dumps({n: [[1, 1]] for n in ["a.png", "b.png", "c.png"]}))
    with pytest.raises(ConfigError, match="one size; a.png is 30 x 20 .* c.png is 30 x 21"):
        _load(tmp_path / "o.json")
