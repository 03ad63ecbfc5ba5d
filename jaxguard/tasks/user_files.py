"""What the tasks' user-data loaders share: reading named `.npz` arrays, spotting zarr stores,
checking an array's dtype and values, and saying an exception in one line.

Every failure is a `ConfigError` whose message starts with `where` (e.g. `data.source
days.npz`), names the array and says what is wrong, so `python -m jaxguard.train` prints it as
one line and exits with code 2 before anything compiles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxguard import _checks
from jaxguard.config import ConfigError

# Metadata files that mark a folder as a zarr store: format 3, format 2's group and array.
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def one_line(error: BaseException) -> str:
    """`"TypeName: message"` of `error` with its whitespace (newlines too) collapsed."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def is_zarr(path: str) -> bool:
    """Whether `path` is a zarr store on disk: a `.zarr` folder or one with zarr metadata."""
    return os.path.isdir(path) and (
        path.rstrip(os.sep).lower().endswith(".zarr")
        or any(os.path.exists(os.path.join(path, marker)) for marker in _ZARR_MARKERS)
    )


def read_npz(where: str, path: str, names: Sequence[str], expected: str) -> dict[str, np.ndarray]:
    """The arrays `names` of the `.npz` file at `path`, as stored, read without pickle.

    Args:
      where: the start of every error message (the config key and the path).
      path: an existing `.npz` file.
      names: the arrays to read; each must be in the file.
      expected: what the file should hold, for the message on a missing array
        (e.g. `"x [N, H, W] and y [N, h, w, C]"`).

    Raises:
      ConfigError: an unreadable file, a missing array, or an object array (which only pickle
        could load, and pickles can run code: the file is read with `allow_pickle=False`).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # zipfile.BadZipFile, ValueError, OSError, EOFError, ...
        raise ConfigError(f"{where}: not a readable .npz file ({one_line(error)})") from None
    arrays = {}
    with archive:
        for name in names:
            if name not in archive.files:
                raise ConfigError(
                    f"{where}: array {name!r} is missing (the file has "
                    f"{', '.join(archive.files) or 'no arrays'}); expected {expected}"
                )
            try:
                arrays[name] = archive[name]
            except ValueError as error:
                if "allow_pickle" not in str(error):
                    raise ConfigError(f"{where}: array {name!r}: {one_line(error)}") from None
                raise ConfigError(
                    f"{where}: array {name!r} is a pickled object array, and .npz files are read "
                    "with allow_pickle=False (pickles can run code); save numbers, e.g. "
                    f"np.savez(path, {name}=np.asarray(values, np.float32), ...)"
                ) from None
            except Exception as error:  # a damaged member: zipfile.BadZipFile, EOFError, ...
                raise ConfigError(f"{where}: array {name!r}: {one_line(error)}") from None
    return arrays


def real_float32(where: str, name: str, values: np.ndarray, layout: str) -> np.ndarray:
    """`values` as float32, after checking they are real numbers, non-empty and in range.

    Args:
      where: the start of every error message.
      name: the array as the user knows it, e.g. `array 'x'` or `variable 'pr'`.
      values: the array as read, any dtype and shape (the caller checks the rank).
      layout: the expected shape, for the messages (e.g. `[N, H, W]`).

    Raises:
      ConfigError: a dtype other than integers or floats (bool, complex, strings, objects),
        an empty axis, or values that are NaN, infinite or beyond
        `±_checks.MAX_INPUT_MAGNITUDE` (the first index is named).
    """
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ConfigError(
            f"{where}: {name} has dtype {values.dtype}; expected real numbers (integers or floats)"
        )
    if values.size == 0:
        raise ConfigError(
            f"{where}: {name} has shape {values.shape}, an empty axis; expected {layout} with "
            "every axis at least 1"
        )
    problem = _checks.input_value_problem(name, values)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return values.astype(np.float32)
