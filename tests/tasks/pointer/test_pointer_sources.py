"""User images and their object positions (`jaxguard/tasks/pointer/sources.py`)."""

import json

import numpy as np
import pytest

from jaxguard.config import ConfigError
from jaxguard.png import write_png
from jaxguard.tasks.pointer import coords, data, sources


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
    return sources.load_folder(str(path), **{**settings, **overrides})


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
    assert sources.source_image_size(str(tmp_path / "objects.csv")) == (20, 30)


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
