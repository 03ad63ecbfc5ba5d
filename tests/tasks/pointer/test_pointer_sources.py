"""User images and their object positions (`jaxguard/tasks/pointer/sources.py`)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxguard import train
from jaxguard.config import ConfigError
from jaxguard.tasks.pointer import coords, data, sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _write_images(folder, names, size=(20, 30), colour=None):
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        if colour is not None:
            image[...] = colour
        Image.fromarray(image).save(folder / name)


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


# ----------------------------------------------------------------------------- image formats
# Each format is written with Pillow from one 8-bit grey reference and read back through
# `read_grey`; the expected grey values come from NumPy, not from Pillow's own conversion.

GREY = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
COLOUR = np.random.default_rng(2).integers(0, 256, (20, 30, 3)).astype(np.uint8)
LUMA = np.array([0.299, 0.587, 0.114])


def _luma(rgb):
    return np.round(rgb.astype(np.float64) @ LUMA).astype(np.uint8)


def _palette_image():
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30], [0, 0, 0]], np.uint8)
    indices = np.arange(20 * 30).reshape(20, 30) % 4
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.ravel().tolist())
    return image, _luma(palette[indices])


def _formats():
    """`(file name, writer(path), expected grey [20, 30])` for every image kind we accept."""
    # 16-bit values that round back to GREY: v * 257 plus up to 128 (not above 65535).
    wide = (GREY.astype(np.uint16) * 257 + np.where(GREY < 255, 128, 0)).astype(np.uint16)
    rgba = np.concatenate([COLOUR, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    grey_alpha = np.stack([GREY, np.zeros_like(GREY)], axis=-1)
    palette, palette_grey = _palette_image()
    bits = GREY > 127
    return {
        "grey png": ("a.png", lambda p: Image.fromarray(GREY).save(p), GREY),
        "16-bit png": ("a.png", lambda p: Image.fromarray(wide).save(p), GREY),
        "palette png": ("a.png", lambda p: palette.save(p), palette_grey),
        "rgb png": ("a.png", lambda p: Image.fromarray(COLOUR).save(p), _luma(COLOUR)),
        "rgba png": ("a.png", lambda p: Image.fromarray(rgba).save(p), _luma(COLOUR)),
        "grey+alpha png": ("a.png", lambda p: Image.fromarray(grey_alpha).save(p), GREY),
        "1-bit png": ("a.png", lambda p: Image.fromarray(bits).save(p), bits * np.uint8(255)),
        "grey tiff": ("a.tif", lambda p: Image.fromarray(GREY).save(p), GREY),
        "bmp": ("a.bmp", lambda p: Image.fromarray(COLOUR).save(p), _luma(COLOUR)),
    }


@pytest.mark.parametrize("kind", list(_formats()))
def test_every_lossless_format_reads_as_documented(tmp_path, kind):
    name, write, expected = _formats()[kind]
    write(tmp_path / name)
    with Image.open(tmp_path / name) as written:
        written.load()  # the file really is of the kind named (not silently converted on save)
        assert written.size == (30, 20)
    np.testing.assert_array_equal(sources.read_grey(str(tmp_path / name)), expected)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_is_read_within_its_compression_error(tmp_path, mode):
    smooth = np.add.outer(np.arange(20) * 6, np.arange(30) * 4).astype(np.uint8)
    pixels = smooth if mode == "L" else np.stack([smooth, smooth // 2, 255 - smooth], -1)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    grey = sources.read_grey(str(tmp_path / "a.jpg"))
    expected = smooth if mode == "L" else _luma(pixels)
    assert grey.dtype == np.uint8 and grey.shape == (20, 30)
    assert np.abs(grey.astype(int) - expected).mean() < 2.0  # lossy, but close


def test_mixed_formats_train_together(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "a.png")
    _palette_image()[0].save(tmp_path / "b.png")
    Image.fromarray(COLOUR).save(tmp_path / "c.jpg")
    (tmp_path / "o.json").write_text(json.dumps({n: [[3, 4]] for n in ["a.png", "b.png", "c.jpg"]}))
    splits = _load(tmp_path / "o.json", examples_per_image=1, val_fraction=0.3, test_fraction=0.3)
    assert sum(len(split["image"]) for split in splits.values()) == 3
    assert sources.source_image_size(str(tmp_path / "o.json")) == (20, 30)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not an image at all", r"image b.png: not a readable image \(UnidentifiedImageError"),
        ("truncated", r"image b.png: not a readable image \(OSError: image file is truncated"),
        ("float", r"image b.png: not a readable image \(ValueError: 32-bit float image"),
    ],
)
def test_unreadable_images_are_one_line(tmp_path, content, message):
    _write_images(tmp_path, ["a.png", "c.png"])
    if content == "truncated":
        Image.fromarray(COLOUR).save(tmp_path / "b.png")
        whole = (tmp_path / "b.png").read_bytes()
        (tmp_path / "b.png").write_bytes(whole[: len(whole) // 2])
    elif content == "float":
        Image.fromarray(GREY.astype(np.float32)).save(tmp_path / "b.tif")
        (tmp_path / "b.tif").rename(tmp_path / "b.png")  # the name does not decide the format
    else:
        (tmp_path / "b.png").write_bytes(content)
    (tmp_path / "o.json").write_text(json.dumps({n: [[3, 4]] for n in ["a.png", "b.png", "c.png"]}))
    with pytest.raises(ConfigError, match=message) as error:
        _load(tmp_path / "o.json")
    assert str(error.value).startswith(f"data.source {tmp_path / 'o.json'}: ")
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- bad coordinates


@pytest.mark.parametrize(
    "point, shown",
    [
        (["abc", 4], '["abc", 4]'),
        ([3, None], "[3, null]"),
        ([True, 4], "[true, 4]"),
        (["3", "4"], '["3", "4"]'),
    ],
)
def test_json_coordinates_that_are_not_numbers_are_one_line(tmp_path, point, shown):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    table = {"a.png": [[3, 4]], "b.png": [[1, 1], point], "c.png": [[1, 1]]}
    (tmp_path / "o.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError) as error:
        _load(tmp_path / "o.json")
    assert str(error.value) == (
        f"data.source {tmp_path / 'o.json'}: image b.png object 1: [column, row] = {shown} are "
        "not both numbers"
    )


@pytest.mark.parametrize("cells", ["abc,4", "3,null", "3,"])
def test_csv_coordinates_that_are_not_numbers_are_one_line(tmp_path, cells):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    path = tmp_path / "o.csv"
    path.write_text(f"image,column,row\na.png,1,1\nb.png,{cells}\nc.png,2,2\n")
    with pytest.raises(ConfigError, match=r"o.csv line 3: column/row .* are not numbers$"):
        _load(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_non_finite_coordinates_are_refused(tmp_path, value):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    text = '{"a.png": [[3, 4]], "b.png": [[' + value + ', 1]], "c.png": [[1, 1]]}'
    (tmp_path / "o.json").write_text(text)
    with pytest.raises(ConfigError, match=r"image b.png object 0 at .* lies outside"):
        _load(tmp_path / "o.json")


def test_cli_prints_one_line_and_exits_2_on_a_coordinate_that_is_text(tmp_path, capsys):
    # The same path as `python -m jaxguard.train`: the data are read before anything compiles.
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    table = {"a.png": [[3, 4]], "b.png": [["abc", 1]], "c.png": [[1, 1]]}
    path = tmp_path / "o.json"
    path.write_text(json.dumps(table))
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            [
                "--cfg",
                os.path.join(ROOT, "configs", "pointer.py:small"),
                f"--cfg.data.source={path}",
                "--workdir",
                str(tmp_path / "run"),
            ]
        )
    assert exit_info.value.code == train.CONFIG_ERROR_EXIT
    # (Other lines may be warnings of the tests before, about JAX having run in this process.)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(
        f'error: data.source {path}: image b.png object 0: [column, row] = ["abc", 1] are'
    )
