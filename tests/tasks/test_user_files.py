"""The loaders' shared helpers (`jaxguard/tasks/user_files.py`); each task's data tests cover
them again through its own files."""

import numpy as np
import pytest

from jaxguard.config import ConfigError
from jaxguard.tasks import user_files


def test_one_line_collapses_newlines_and_names_the_type():
    assert user_files.one_line(ValueError("bad\n  header\tline")) == "ValueError: bad header line"


def test_is_zarr_knows_stores_by_name_or_metadata(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "zarr.json").write_text("{}")
    (tmp_path / "V2.ZARR").mkdir()
    (tmp_path / "array2").mkdir()
    (tmp_path / "array2" / ".zarray").write_text("{}")
    assert user_files.is_zarr(str(tmp_path / "a.zarr"))
    assert user_files.is_zarr(str(tmp_path / "v3"))
    assert user_files.is_zarr(str(tmp_path / "V2.ZARR"))
    assert user_files.is_zarr(str(tmp_path / "array2"))
    assert not user_files.is_zarr(str(tmp_path / "plain"))
    assert not user_files.is_zarr(str(tmp_path / "absent.zarr"))


def test_read_npz_reads_the_named_arrays_and_refuses_pickles(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.arange(3), b=np.ones((2, 2)), extra=np.zeros(1))
    arrays = user_files.read_npz("here", str(path), ("a", "b"), "a and b")
    assert set(arrays) == {"a", "b"}
    np.testing.assert_array_equal(arrays["a"], [0, 1, 2])
    with pytest.raises(ConfigError, match=r"^here: array 'c' is missing \(the file has a, b, "):
        user_files.read_npz("here", str(path), ("c",), "c [N]")
    np.savez(path, a=np.array([1, "x"], dtype=object))
    with pytest.raises(ConfigError, match=r"^here: array 'a' is a pickled object array"):
        user_files.read_npz("here", str(path), ("a",), "a")
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match=r"^here: not a readable .npz file \(BadZipFile"):
        user_files.read_npz("here", str(path), ("a",), "a")


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([1.0, 2.0], np.complex64), "has dtype complex64; expected real numbers"),
        (np.array([True]), "has dtype bool; expected real numbers"),
        (np.array(["1.0"]), r"has dtype <U3; expected real numbers"),
        (np.zeros((2, 0)), r"has shape \(2, 0\), an empty axis; expected \[N, K\]"),
        (np.array([0.0, np.inf]), r"holds 1 NaN or infinite values \(first at index \(1,\)\)"),
        (np.array([0.0, -2e15, 3e15]), r"holds 2 values beyond ±1e\+15 \(first at index \(1,\): "),
    ],
)
def test_real_float32_refuses_what_the_pipeline_cannot_use(values, message):
    with pytest.raises(ConfigError, match=rf"^f.npz: array 'v' {message}"):
        user_files.real_float32("f.npz", "array 'v'", values, "[N, K]")


def test_real_float32_converts_integers_and_keeps_the_bound():
    converted = user_files.real_float32("f", "a", np.array([3, -1e15], np.float64), "[N]")
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, np.float32([3, -1e15]))
    assert (
        user_files.real_float32("f", "a", np.arange(4, dtype=np.uint16), "[N]").dtype == np.float32
    )
