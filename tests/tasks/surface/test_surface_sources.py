"""The surface task's user volumes (`data.source`): `sources.py` and the file `readers.py`.

Every problem with the files is a one-line ConfigError naming the file; the split tests run
through `splits.make_splits`, the way a run reads them.
"""

import os
import sys

import numpy as np
import pytest
import tifffile
import zarr

from jaxguard import config as config_lib
from jaxguard import train
from jaxguard.config import ConfigError
from jaxguard.tasks.surface import data as data_lib
from jaxguard.tasks.surface import sources
from jaxguard.tasks.surface import splits as splits_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")


def _user_config(source, *overrides):
    return config_lib.load_config(SMALL, [f"data.source={source}", *overrides])


def _pairs(count, shape=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    volumes = rng.normal(size=(count, *shape)).astype(np.float32) * 3 + 7
    masks = (volumes > 7).astype(np.uint8)
    return volumes, masks


def test_npz_source_is_split_and_normalised(tmp_path):
    volumes, masks = _pairs(4)
    path = tmp_path / "scroll.npz"
    np.savez(path, volume=volumes, mask=masks)
    config = _user_config(path)
    splits = splits_lib.make_splits(config)
    # 4 volumes: 2 train, 1 val, 1 test (the last).
    test_volume = data_lib.normalise(volumes[3])
    np.testing.assert_array_equal(
        splits["test"]["volume"], data_lib.tile_volume(test_volume, masks[3], 8)["volume"]
    )
    np.testing.assert_array_equal(
        splits["test"]["labels"], data_lib.tile_volume(test_volume, masks[3], 8)["labels"]
    )
    assert splits["train"]["volume"].shape[1:] == (8, 8, 8)


def test_folder_source_pairs_volumes_and_masks_by_name(tmp_path):
    volumes, masks = _pairs(3, shape=(16, 16, 20))
    (tmp_path / "volumes").mkdir()
    (tmp_path / "masks").mkdir()
    for index in range(3):
        np.save(tmp_path / "volumes" / f"v{index}.npy", volumes[index])
        np.save(tmp_path / "masks" / f"v{index}.npy", masks[index].astype(bool))
    pairs = sources.load_volumes(str(tmp_path))
    assert len(pairs) == 3
    for (volume, mask), raw, raw_mask in zip(pairs, volumes, masks, strict=True):
        np.testing.assert_allclose(volume, (raw - raw.mean()) / raw.std(), atol=1e-5)
        np.testing.assert_array_equal(mask, raw_mask)


def _expect_config_error(source, match, *overrides, names=None):
    """make_splits on `source` stops with one line matching `match`, starting with `names`."""
    with pytest.raises(ConfigError, match=match) as error:
        splits_lib.make_splits(_user_config(source, *overrides))
    assert "\n" not in str(error.value)
    if names is not None:
        assert str(error.value).startswith(f"data.source: {names}")


def test_missing_file_is_named(tmp_path):
    _expect_config_error(tmp_path / "absent.npz", "absent.npz not found")


def test_missing_mask_file_in_a_folder_is_named(tmp_path):
    volumes, _ = _pairs(1)
    (tmp_path / "volumes").mkdir()
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "volumes" / "a.npy", volumes[0])
    _expect_config_error(tmp_path, "masks/a.npy not found")


def test_shape_mismatch_between_volume_and_mask_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    path = tmp_path / "bad.npz"
    np.savez(path, volume=volumes, mask=masks[:, :, :, :8])
    _expect_config_error(
        path, "volume has shape \\(3, 16, 16, 16\\) but mask has shape \\(3, 16, 16, 8\\)"
    )


def test_non_binary_mask_is_reported_with_its_values(tmp_path):
    volumes, masks = _pairs(3)
    masks[0, 0, 0, 0] = 2  # e.g. an "unlabelled" class
    path = tmp_path / "labels.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "mask is not binary \\(values 0, 1, 2\\)")


def test_non_finite_volume_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    volumes[1, 2, 2, 2] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "finite")


@pytest.mark.parametrize(
    "case, message",
    [
        ("string mask", r"mask has dtype <U\d; expected 0/1 as bool, integers or floats"),
        (
            "complex volume",
            r"volume has dtype complex64; expected real numbers \(integers or "
            r"floats\) \(keep np.abs\(volume\) or volume.real explicitly\)",
        ),
        ("bool volume", r"volume has dtype bool; expected real numbers"),
        ("empty volume", r"volume has shape \(0, 16, 16\), an empty axis"),
        (
            "pickled volume",
            r"bad.npz: not a readable .npz file \(ValueError: Object arrays cannot "
            r"be loaded when allow_pickle=False\)",
        ),
        # Refused, not normalised: the outlier's std would flatten every other voxel to one
        # float32 value (issue 14's x = 1e30).
        (
            "huge value",
            r"bad.npz\[0\]: volume holds 1 values beyond ±1e\+15 \(first at index "
            r"\(3, 4, 5\): 1e\+30\)",
        ),
    ],
)
def test_bad_arrays_are_one_line_naming_the_file(tmp_path, case, message):
    volumes, masks = _pairs(3)
    arrays = {"volume": volumes, "mask": masks}
    if case == "string mask":
        arrays["mask"] = masks.astype(str)  # "0"/"1" text, e.g. read from a CSV
    elif case == "complex volume":
        arrays["volume"] = volumes.astype(np.complex64) * (1 + 1j)
    elif case == "bool volume":
        arrays["volume"] = volumes > 7
    elif case == "empty volume":
        arrays = {"volume": volumes[:, :0], "mask": masks[:, :0]}
    elif case == "pickled volume":
        arrays["volume"] = np.array([volumes[0], "scan"], dtype=object)
    elif case == "huge value":
        arrays["volume"] = volumes.astype(np.float64)
        arrays["volume"][0, 3, 4, 5] = 1e30
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    _expect_config_error(path, message, names=path)


def test_too_few_volumes_for_the_splits(tmp_path):
    volumes, masks = _pairs(2)
    path = tmp_path / "two.npz"
    np.savez(path, volume=volumes, mask=masks)
    _expect_config_error(path, "holds 2 volume\\(s\\) .* leave none for training")


def test_npz_without_the_named_arrays(tmp_path):
    volumes, masks = _pairs(3)
    path = tmp_path / "renamed.npz"
    np.savez(path, image=volumes, mask=masks)
    _expect_config_error(path, "has no array 'volume'")


def test_corrupt_npz_is_named(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    _expect_config_error(path, "broken.npz: not a readable .npz file", names=path)


# ----------------------------------------------------------------------------- TIFF and zarr

SHAPE = (8, 10, 12)


def _small_pairs(count, seed=0):
    """`count` float32 `[8, 10, 12]` volumes (mean 7, std 3) and their binary uint8 masks."""
    return _pairs(count, shape=SHAPE, seed=seed)


def _folders(root):
    (root / "volumes").mkdir()
    (root / "masks").mkdir()
    return root / "volumes", root / "masks"


def _write_pages(path, stack):
    """A generic multi-page TIFF: one page per slice of `stack`, no shape metadata."""
    for page in stack:
        tifffile.imwrite(path, page, append=True, metadata=None)


def _assert_pairs_equal(pairs, volumes, masks):
    assert len(pairs) == len(volumes)
    for (volume, mask), raw, raw_mask in zip(pairs, volumes, masks, strict=True):
        expected_volume, expected_mask = sources.check_pair(raw, raw_mask, "reference")
        assert volume.dtype == np.float32 and mask.dtype == np.uint8
        np.testing.assert_array_equal(volume, expected_volume)
        np.testing.assert_array_equal(mask, expected_mask)


def test_tiff_stacks_in_a_folder_pair_by_name_and_mix_with_npy(tmp_path):
    volumes, masks = _small_pairs(3)
    volume_dir, mask_dir = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])  # tifffile's own shaped stack
    tifffile.imwrite(mask_dir / "a.tif", masks[0].astype(bool))
    _write_pages(volume_dir / "b.tiff", volumes[1])  # pages only, as other tools write them
    _write_pages(mask_dir / "b.tif", masks[1])
    np.save(volume_dir / "c.npy", volumes[2])
    tifffile.imwrite(mask_dir / "c.tif", masks[2])
    (volume_dir / "notes.txt").write_text("not a volume")
    pairs = sources.load_volumes(str(tmp_path))
    _assert_pairs_equal(pairs, volumes, masks)


def test_folder_of_2d_tiff_slices_is_one_volume_in_numeric_order(tmp_path):
    # 12 slices named 0..11 without padding: plain name order would put 10, 11 after 1.
    volumes, masks = _pairs(1, shape=(12, 10, 8), seed=3)
    volume_dir, mask_dir = _folders(tmp_path)
    (volume_dir / "scroll1").mkdir()
    (mask_dir / "scroll1").mkdir()
    for index in range(12):
        tifffile.imwrite(volume_dir / "scroll1" / f"{index}.tif", volumes[0, index])
        tifffile.imwrite(mask_dir / "scroll1" / f"{index:04d}.tiff", masks[0, index])
    pairs = sources.load_volumes(str(tmp_path))
    _assert_pairs_equal(pairs, volumes, masks)


def test_zarr_group_with_stacks_is_split_and_normalised(tmp_path):
    volumes, masks = _pairs(4)
    path = tmp_path / "my_scroll.zarr"
    zarr.save_group(str(path), volume=volumes, mask=masks.astype(bool))
    _assert_pairs_equal(sources.load_volumes(str(path)), volumes, masks)
    splits = splits_lib.make_splits(_user_config(path))
    test_volume, test_mask = sources.check_pair(volumes[3], masks[3], "reference")
    np.testing.assert_array_equal(
        splits["test"]["labels"], data_lib.tile_volume(test_volume, test_mask, 8)["labels"]
    )


def test_zarr_group_with_one_volume(tmp_path):
    volumes, masks = _small_pairs(1)
    path = tmp_path / "one.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.create_array("volume", data=volumes[0])
    root.create_array("mask", data=masks[0])
    _assert_pairs_equal(sources.load_volumes(str(path)), volumes, masks)


def test_zarr_stores_in_a_folder(tmp_path):
    volumes, masks = _small_pairs(2)
    volume_dir, mask_dir = _folders(tmp_path)
    zarr.create_array(store=str(volume_dir / "a.zarr"), data=volumes[0])
    zarr.create_array(store=str(mask_dir / "a.zarr"), data=masks[0])
    zarr.save_group(str(volume_dir / "b.zarr"), scan=volumes[1])  # a group of one array
    tifffile.imwrite(mask_dir / "b.tif", masks[1])
    _assert_pairs_equal(sources.load_volumes(str(tmp_path)), volumes, masks)


# Errors: each one line, starting with `data.source: <the file>`.


def test_missing_zarr_source_is_named(tmp_path):
    _expect_config_error(tmp_path / "absent.zarr", "absent.zarr not found")


def test_missing_tiff_mask_in_a_folder_is_named(tmp_path):
    volumes, _ = _small_pairs(1)
    volume_dir, _ = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])
    _expect_config_error(tmp_path, "masks/a.tif not found: .*volumes/a.tif needs a mask named 'a'")


@pytest.mark.parametrize("missing", ["volume", "mask"])
def test_zarr_group_without_volume_or_mask_lists_what_it_has(tmp_path, missing):
    volumes, masks = _small_pairs(1)
    arrays = {"volume": volumes[0], "mask": masks[0]}
    arrays["labels" if missing == "mask" else "image"] = arrays.pop(missing)
    path = tmp_path / "renamed.zarr"
    zarr.save_group(str(path), **arrays)
    has = sorted(arrays)
    _expect_config_error(
        path, f"has no array '{missing}' \\(it has \\['{has[0]}', '{has[1]}'\\]\\)", names=path
    )


def test_zarr_array_as_source_is_refused(tmp_path):
    path = tmp_path / "volume_only.zarr"
    zarr.create_array(store=str(path), data=_small_pairs(1)[0][0])
    _expect_config_error(path, "is a zarr array, not a group", names=path)


def test_shape_mismatch_in_a_zarr_group_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    path = tmp_path / "bad.zarr"
    zarr.save_group(str(path), volume=volumes, mask=masks[:, :, :, :8])
    _expect_config_error(
        path,
        "volume has shape \\(3, 16, 16, 16\\) but mask has shape \\(3, 16, 16, 8\\)",
        names=path,
    )


def test_shape_mismatch_between_tiff_volume_and_mask_is_reported(tmp_path):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])
    tifffile.imwrite(mask_dir / "a.tif", masks[0, :, :, :11])
    _expect_config_error(
        tmp_path,
        "volume has shape \\(8, 10, 12\\) but mask has shape \\(8, 10, 11\\)",
        names=volume_dir / "a.tif",
    )


def test_non_binary_mask_in_a_zarr_group_is_reported(tmp_path):
    volumes, masks = _pairs(3)
    masks[2, 1, 1, 1] = 2
    path = tmp_path / "labels.zarr"
    zarr.save_group(str(path), volume=volumes, mask=masks)
    _expect_config_error(path, "\\[2\\]: mask is not binary \\(values 0, 1, 2\\)", names=path)


def test_non_binary_tiff_mask_is_reported(tmp_path):
    volumes, masks = _small_pairs(1)
    masks[0, 0, 0, 0] = 255
    volume_dir, mask_dir = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])
    tifffile.imwrite(mask_dir / "a.tif", masks[0])
    _expect_config_error(
        tmp_path, "mask is not binary \\(values 0, 1, 255\\)", names=volume_dir / "a.tif"
    )


def test_corrupt_tiff_is_named(tmp_path):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])
    (mask_dir / "a.tif").write_bytes(b"not a tiff at all")
    _expect_config_error(
        tmp_path, "a.tif: not a readable TIFF file \\(TiffFileError", names=mask_dir / "a.tif"
    )


def test_tiff_with_pages_of_different_shapes_is_refused(tmp_path):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    _write_pages(volume_dir / "a.tif", volumes[0])
    tifffile.imwrite(volume_dir / "a.tif", volumes[0, 0, :5], append=True, metadata=None)
    tifffile.imwrite(mask_dir / "a.tif", masks[0])
    _expect_config_error(
        tmp_path,
        "holds 2 image series of shapes \\[\\(8, 10, 12\\), \\(5, 12\\)\\]",
        names=volume_dir / "a.tif",
    )


def test_2d_tiff_file_is_not_a_volume(tmp_path):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    tifffile.imwrite(volume_dir / "a.tif", volumes[0, 0])
    tifffile.imwrite(mask_dir / "a.tif", masks[0])
    _expect_config_error(
        tmp_path,
        "TIFF image has shape \\(10, 12\\); a volume TIFF must be a multi-page stack",
        names=volume_dir / "a.tif",
    )


def test_single_tiff_source_has_no_mask(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _small_pairs(1)[0][0])
    _expect_config_error(path, "a single TIFF holds no mask", names=path)


def test_tiff_slices_of_different_shapes_are_refused(tmp_path):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    (volume_dir / "scroll1").mkdir()
    tifffile.imwrite(volume_dir / "scroll1" / "0000.tif", volumes[0, 0])
    tifffile.imwrite(volume_dir / "scroll1" / "0001.tif", volumes[0, 1, :, :11])
    tifffile.imwrite(mask_dir / "scroll1.tif", masks[0, :2])
    _expect_config_error(
        tmp_path,
        "0001.tif: slice has shape \\(10, 11\\) but .*0000.tif has shape \\(10, 12\\)",
        names=volume_dir / "scroll1" / "0001.tif",
    )


def test_folder_without_tiff_slices_is_named(tmp_path):
    volume_dir, mask_dir = _folders(tmp_path)
    (volume_dir / "scroll1").mkdir()
    (volume_dir / "scroll1" / "0000.png").write_bytes(b"")
    tifffile.imwrite(mask_dir / "scroll1.tif", _small_pairs(1)[1][0])
    _expect_config_error(
        tmp_path, "folder holds no .tif/.tiff slices", names=volume_dir / "scroll1"
    )


def test_two_volumes_with_one_name_are_refused(tmp_path):
    volumes, _ = _small_pairs(1)
    volume_dir, _ = _folders(tmp_path)
    np.save(volume_dir / "a.npy", volumes[0])
    tifffile.imwrite(volume_dir / "a.tif", volumes[0])
    _expect_config_error(tmp_path, "2 entries of .*volumes are named 'a' \\(a.npy, a.tif\\)")


def test_corrupt_zarr_metadata_is_named(tmp_path):
    volumes, masks = _small_pairs(1)
    path = tmp_path / "broken.zarr"
    zarr.save_group(str(path), volume=volumes[0], mask=masks[0])
    (path / "zarr.json").write_text("{ nonsense")
    _expect_config_error(path, "broken.zarr: not a readable zarr store \\(", names=path)


def test_corrupt_zarr_chunk_is_named(tmp_path):
    volumes, masks = _small_pairs(1)
    path = tmp_path / "broken.zarr"
    zarr.save_group(str(path), volume=volumes[0], mask=masks[0])
    chunks = [os.path.join(r, f) for r, _, fs in os.walk(path / "volume" / "c") for f in fs]
    assert chunks
    for chunk in chunks:
        with open(chunk, "wb") as file:
            file.write(b"garbage")
    _expect_config_error(
        path, "broken.zarr/volume: not a readable zarr array \\(", names=path / "volume"
    )


@pytest.mark.parametrize("module, mask_name", [("tifffile", "a.tif"), ("zarr", "a.zarr")])
def test_missing_optional_package_says_how_to_install_it(tmp_path, monkeypatch, module, mask_name):
    volumes, masks = _small_pairs(1)
    volume_dir, mask_dir = _folders(tmp_path)
    np.save(volume_dir / "a.npy", volumes[0])
    if module == "tifffile":
        tifffile.imwrite(mask_dir / mask_name, masks[0])
    else:
        zarr.create_array(store=str(mask_dir / mask_name), data=masks[0])
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    _expect_config_error(
        tmp_path,
        f"needs the {module} package, which is not installed; pip install 'jaxguard\\[io\\]'",
        names=mask_dir / mask_name,
    )


def test_cli_prints_one_line_and_exits_2_on_a_complex_volume(tmp_path, capsys):
    # The same path as `python -m jaxguard.train`: the data are read before anything compiles.
    volumes, masks = _pairs(3)
    path = tmp_path / "complex.npz"
    np.savez(path, volume=volumes.astype(np.complex64), mask=masks)
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            ["--cfg", SMALL, f"--cfg.data.source={path}", "--workdir", str(tmp_path / "run")]
        )
    assert exit_info.value.code == train.CONFIG_ERROR_EXIT
    # (Other lines may be warnings of the tests before, about JAX having run in this process.)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(
        f"error: data.source: {path}[0]: volume has dtype complex64; expected real numbers"
    )
