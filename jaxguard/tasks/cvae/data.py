"""Data of the cVAE downscaling task: embedded generator and user files (.npz, netCDF, zarr).

A sample is a pair of arrays:

  `x`  float32 `[H, W]`: the high-resolution daily precipitation field, mm/day, `>= 0`.
  `y`  float32 `[h, w, C]`: coarse predictors on a grid `factor` times coarser
       (`H = factor * h`, `W = factor * w`), in any units (the model standardizes them).

Embedded generator (`generate`), pure NumPy and deterministic given the seed:

  Background rain. Three periodic Gaussian random fields per day: moisture `M`
  (correlation length 6 px), a fine convective texture `T` (1.2 px) and
  instability `I` (5 px), plus a day-level wetness `w ~ N(0, 1)`. The rain latent
  `R = 0.75 M + 0.5 w + (0.45 + 0.25 sigmoid(I)) T` is cut at 0 (dry where
  `R <= 0`, about half of all pixels) and mapped to
  `3 * R^1.6 * exp(0.35 g)` mm/day with a day-level intensity `g ~ N(0, 1)`, which
  gives a right-skewed, heavy-tailed wet-pixel distribution. A soft cap
  `cap * tanh(rain / cap)` with `cap = 0.8 * heavy_peak_min` keeps ordinary days
  below the extreme range.

  Heavy-precipitation days. Exactly `round(heavy_day_fraction * n)` days of each
  split (default 1.3%, seed 002's share) also hold 1-3 convective cells: Gaussian
  bumps of width 1.2-2.2 px whose peaks are `heavy_peak_min * (1.05 + Exp(0.5))`,
  i.e. always above `heavy_peak_min`. The cells raise the instability field
  around them (a bump 3 px wide), so the predictors hint where they are. With
  `data.extreme_threshold = heavy_peak_min` (the default config), exactly the
  heavy days hold extreme pixels, about 5-30 pixels each.

  Predictors, block means over `factor x factor` cells: channel 0 is the coarse
  precipitation `coarsen(x)` (so the coarse-grained mass of `x` is exactly the
  predictor), channel 1 the moisture index `0.75 M + 0.5 w`, channel 2 the
  instability `I`.

The three splits are drawn from independent child streams of `seed`, so the test
split does not change with `num_train`.

User data (`load_source`), samples in time order; the last `test_fraction` of the
samples form the test split and the `val_fraction` before them the validation split
(contiguous blocks, so neighbouring days do not leak across splits). One of:

  * a `.npz` file with the arrays `x` `[N, H, W]` and `y` `[N, h, w, C]`, read with
    `allow_pickle=False`;
  * a netCDF file (`.nc`, netCDF4/HDF5 read with the h5netcdf engine, netCDF3 with scipy's)
    or a zarr store (`.zarr`) written by xarray, opened with xarray. The precipitation is the
    variable `Names.field` with dims `(time, *fine)`; each predictor variable in
    `Names.predictors` has dims `(time, *coarse)` (one channel) or one more dim last (one
    channel per entry), stacked in the listed order. The names are config keys
    (`data.field_var`, `data.predictor_vars`, `data.time_dim`, `data.fine_dims`,
    `data.coarse_dims`); the coordinate values of these dims and the field's attributes are
    kept (`Coordinates`), so samples can be written back on the input's grid and dates.

netCDF and zarr need the optional `io` extra (`pip install 'jaxguard[io]'`: xarray, h5netcdf,
zarr). Every problem (missing file, variable or dim, a wrong rank, an empty axis, a dtype that
is not real numbers, pickled objects, NaN, infinite or huge values, negative precipitation,
grids whose ratio is not one whole factor) is one ConfigError line naming the file and the
array.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import NamedTuple

import numpy as np

from jaxguard import _checks
from jaxguard.config import ConfigError, MissingInputError
from jaxguard.tasks.user_files import is_zarr, one_line, read_npz, real_float32

SPLITS = ("train", "val", "test")
PREDICTOR_NAMES = ("coarse precipitation", "moisture", "instability")

# Correlation lengths of the generator's random fields, in fine pixels.
_MOISTURE_LENGTH = 6.0
_TEXTURE_LENGTH = 1.2
_INSTABILITY_LENGTH = 5.0
# Rain latent R = _MOISTURE_WEIGHT * M + _WETNESS_WEIGHT * w + texture weight * T.
_MOISTURE_WEIGHT = 0.75
_WETNESS_WEIGHT = 0.5
_TEXTURE_BASE = 0.45
_TEXTURE_INSTABILITY = 0.25
# Rain rate 3 * R^1.6 * exp(0.35 g), mm/day.
_RAIN_SCALE = 3.0
_RAIN_EXPONENT = 1.6
_DAY_INTENSITY_LOG_STD = 0.35
# Ordinary days are softly capped at this share of heavy_peak_min.
_CAP_SHARE = 0.8
# Convective cells of heavy days.
_MAX_CELLS = 3
_CELL_WIDTH = (1.2, 2.2)
_CELL_PEAK_FLOOR = 1.05
_CELL_PEAK_EXCESS_MEAN = 0.5
_CELL_INSTABILITY_AMPLITUDE = 2.0
_CELL_INSTABILITY_WIDTH = 3.0


def _check_count(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"generate: `{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"generate: `{name}` must be >= {minimum}, got {value}.")
    return int(value)


def coarsen(field: np.ndarray, factor: int) -> np.ndarray:
    """Block means `[n, H, W, ...] -> [n, H // factor, W // factor, ...]` in NumPy.

    The host-side twin of `jaxguard.losses.coarsen`, used to build predictors and
    the coarse mass targets before any array reaches JAX.
    """
    n, height, width, *rest = field.shape
    blocks = field.reshape(n, height // factor, factor, width // factor, factor, *rest)
    return blocks.mean(axis=(2, 4))


def _random_fields(rng: np.random.Generator, n: int, size: int, length: float) -> np.ndarray:
    """`[n, size, size]` periodic stationary Gaussian fields with unit variance.

    White noise filtered in Fourier space by `exp(-2 pi^2 k^2 length^2)`, i.e. a
    Gaussian correlation of about `length` pixels.
    """
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    spectrum = np.exp(-2.0 * np.pi**2 * (kx**2 + ky**2) * length**2)
    # The filtered field is white noise convolved with the impulse response, so its variance
    # is the impulse response's sum of squares; dividing by its root gives unit variance.
    impulse = np.fft.irfft2(spectrum, s=(size, size))
    noise = rng.standard_normal((n, size, size))
    fields = np.fft.irfft2(np.fft.rfft2(noise) * spectrum, s=(size, size))
    return fields / np.sqrt(np.sum(impulse**2))


def _periodic_bumps(
    size: int, centres: np.ndarray, widths: np.ndarray, peaks: np.ndarray
) -> np.ndarray:
    """Sum of Gaussian bumps on a periodic `size x size` grid: `[n, cells] -> [n, size, size]`."""
    pixels = np.arange(size, dtype=np.float64)
    # Periodic distance, so a cell near an edge wraps like the random fields do.
    dy = pixels[None, None, :, None] - centres[:, :, 0, None, None]
    dx = pixels[None, None, None, :] - centres[:, :, 1, None, None]
    dy = (dy + size / 2) % size - size / 2
    dx = (dx + size / 2) % size - size / 2
    squared = (dy**2 + dx**2) / (2.0 * widths[:, :, None, None] ** 2)
    return np.sum(peaks[:, :, None, None] * np.exp(-squared), axis=1)


def _split(
    rng: np.random.Generator,
    n: int,
    *,
    fine_size: int,
    factor: int,
    heavy_day_fraction: float,
    heavy_peak_min: float,
) -> dict[str, np.ndarray]:
    moisture = _random_fields(rng, n, fine_size, _MOISTURE_LENGTH)
    texture = _random_fields(rng, n, fine_size, _TEXTURE_LENGTH)
    instability = _random_fields(rng, n, fine_size, _INSTABILITY_LENGTH)
    wetness = rng.standard_normal(n)[:, None, None]
    intensity = np.exp(_DAY_INTENSITY_LOG_STD * rng.standard_normal(n))[:, None, None]

    moisture_index = _MOISTURE_WEIGHT * moisture + _WETNESS_WEIGHT * wetness
    texture_weight = _TEXTURE_BASE + _TEXTURE_INSTABILITY / (1.0 + np.exp(-instability))
    latent = moisture_index + texture_weight * texture
    rain = _RAIN_SCALE * np.maximum(latent, 0.0) ** _RAIN_EXPONENT * intensity
    cap = _CAP_SHARE * heavy_peak_min
    rain = cap * np.tanh(rain / cap)

    heavy = np.zeros(n, bool)
    heavy[rng.choice(n, size=int(round(heavy_day_fraction * n)), replace=False)] = True
    num_heavy = int(heavy.sum())
    if num_heavy:
        num_cells = rng.integers(1, _MAX_CELLS + 1, size=num_heavy)
        present = np.arange(_MAX_CELLS)[None, :] < num_cells[:, None]
        centres = rng.uniform(0.0, fine_size, size=(num_heavy, _MAX_CELLS, 2))
        widths = rng.uniform(*_CELL_WIDTH, size=(num_heavy, _MAX_CELLS))
        excess = rng.exponential(_CELL_PEAK_EXCESS_MEAN, size=(num_heavy, _MAX_CELLS))
        peaks = np.where(present, heavy_peak_min * (_CELL_PEAK_FLOOR + excess), 0.0)
        rain[heavy] += _periodic_bumps(fine_size, centres, widths, peaks)
        hint = np.where(present, _CELL_INSTABILITY_AMPLITUDE, 0.0)
        instability[heavy] += _periodic_bumps(
            fine_size, centres, np.full_like(widths, _CELL_INSTABILITY_WIDTH), hint
        )

    x = rain.astype(np.float32)
    channels = [x, moisture_index, instability]
    y = np.stack([coarsen(c.astype(np.float64), factor) for c in channels], axis=-1)
    return {"x": x, "y": y.astype(np.float32)}


def generate(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    fine_size: int,
    factor: int,
    heavy_day_fraction: float,
    heavy_peak_min: float,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Draws the train, val and test splits of the embedded downscaling data.

    Args:
      num_train: samples (days) in the train split, `>= 1`.
      num_val: samples in the val split, `>= 1`.
      num_test: samples in the test split, `>= 1`.
      fine_size: edge `H = W` of the precipitation field in pixels, a multiple of `factor`.
      factor: fine pixels per coarse cell along each axis, `>= 1`.
      heavy_day_fraction: share of each split's days that hold convective cells, in `[0, 1]`.
      heavy_peak_min: every cell peaks above this value (mm/day), `> 0`.
      seed: seeds the three splits' independent streams, `>= 0`.

    Returns:
      `{"train": split, "val": split, "test": split}` with `"x"` float32 `[N, H, W]`
      (mm/day) and `"y"` float32 `[N, H // factor, W // factor, 3]`
      (`PREDICTOR_NAMES`).
    """
    sizes = tuple(
        _check_count(name, value, minimum=1)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test))
    )
    fine_size = _check_count("fine_size", fine_size, minimum=2)
    factor = _check_count("factor", factor, minimum=1)
    seed = _check_count("seed", seed, minimum=0)
    if fine_size % factor:
        raise ValueError(
            f"generate: `fine_size`={fine_size} must be a multiple of `factor`={factor}."
        )
    _checks.check_in_range("generate", "heavy_day_fraction", heavy_day_fraction, 0.0, 1.0)
    _checks.check_positive("generate", "heavy_peak_min", heavy_peak_min)
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    return {
        name: _split(
            np.random.default_rng(stream),
            n,
            fine_size=fine_size,
            factor=factor,
            heavy_day_fraction=heavy_day_fraction,
            heavy_peak_min=heavy_peak_min,
        )
        for name, n, stream in zip(SPLITS, sizes, streams, strict=True)
    }


class Names(NamedTuple):
    """The variable and dimension names of a netCDF or zarr source (config keys `data.*`)."""

    field: str  # data.field_var: precipitation, dims (time, *fine).
    predictors: tuple[str, ...]  # data.predictor_vars: dims (time, *coarse[, channel]).
    time: str  # data.time_dim
    fine: tuple[str, str]  # data.fine_dims: (y axis, x axis) of the precipitation grid.
    coarse: tuple[str, str]  # data.coarse_dims: (y axis, x axis) of the predictor grid.


class Coordinates(NamedTuple):
    """Where the samples lie: the time labels of each split and the grid axes' values.

    For the embedded generator and `.npz` files these are indices (sample number, pixel).
    """

    names: Names
    time: dict[str, np.ndarray]  # split -> [N_split] labels (numbers or datetime64).
    fine: tuple[np.ndarray, np.ndarray]  # [H], [W]
    coarse: tuple[np.ndarray, np.ndarray]  # [h], [w]
    channels: tuple[str, ...]  # The C predictor channels' names.
    field_attrs: dict  # The precipitation variable's attributes (units, long_name, ...).


def index_coordinates(splits: dict[str, dict[str, np.ndarray]], names: Names) -> Coordinates:
    """Coordinates of arrays without any: sample numbers over the splits, pixel indices."""
    sizes = [len(splits[name]["x"]) for name in SPLITS]
    starts = np.cumsum([0, *sizes])
    _, height, width = splits["train"]["x"].shape
    _, coarse_h, coarse_w, channels = splits["train"]["y"].shape
    return Coordinates(
        names=names,
        time={
            name: np.arange(a, b)
            for name, a, b in zip(SPLITS, starts[:-1], starts[1:], strict=True)
        },
        fine=(np.arange(height), np.arange(width)),
        coarse=(np.arange(coarse_h), np.arange(coarse_w)),
        channels=tuple(f"channel {i}" for i in range(channels)),
        field_attrs={"units": "mm/day"},
    )


def import_xarray(where: str, engine: str):
    """xarray, after checking that the engine's packages (h5netcdf and h5py, scipy, zarr) import."""
    # h5netcdf imports without h5py (its HDF5 backend) and fails only when a file is opened.
    for module in ("xarray", engine, *(("h5py",) if engine == "h5netcdf" else ())):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"{where}: netCDF and zarr need the {module} package, which is not installed; "
                "pip install 'jaxguard[io]'"
            ) from error
    return importlib.import_module("xarray")


def _open_dataset(where: str, path: str):
    """The xarray Dataset at `path`: netCDF4 (h5netcdf), netCDF3 (scipy) or zarr."""
    if os.path.isdir(path):
        engine = "zarr"
    else:
        with open(path, "rb") as f:
            engine = "scipy" if f.read(3) == b"CDF" else "h5netcdf"
    xarray = import_xarray(where, engine)
    if engine == "zarr":
        try:
            return xarray.open_zarr(path, consolidated=True, chunks=None)
        except Exception:  # noqa: S110 - no consolidated metadata: read each array's own below.
            pass  # (xarray's own fallback, consolidated=None, warns on every read)
    try:
        if engine == "zarr":
            return xarray.open_zarr(path, consolidated=False, chunks=None)
        return xarray.open_dataset(path, engine=engine)
    except Exception as error:  # OSError, ValueError, KeyError, ... from the engines
        kind = "zarr store" if engine == "zarr" else "netCDF file"
        raise ConfigError(f"{where}: not a readable {kind} ({one_line(error)})") from None


def _variable(where: str, dataset, name: str, dims: tuple[str, ...], key: str, extra: int):
    """`dataset[name]` as NumPy with `dims` first (then up to `extra` more dims) and its dims."""
    if name not in dataset.data_vars:
        raise ConfigError(
            f"{where}: variable {name!r} is missing (the dataset has "
            f"{', '.join(sorted(map(str, dataset.data_vars))) or 'no variables'}); set {key}"
        )
    array = dataset[name]
    rest = tuple(d for d in array.dims if d not in dims)
    if not set(dims) <= set(array.dims) or len(rest) > extra:
        expected = ", ".join(dims) + (", and at most one more" if extra else "")
        raise ConfigError(
            f"{where}: variable {name!r} has dims ({', '.join(map(str, array.dims))}); "
            f"expected ({expected}); set data.time_dim, data.fine_dims and data.coarse_dims to "
            "the file's names"
        )
    try:
        values = array.transpose(*dims, *rest).values
    except Exception as error:  # a damaged chunk or codec error
        raise ConfigError(f"{where}: variable {name!r}: {one_line(error)}") from None
    return values, rest


def _axis_values(dataset, dim: str) -> np.ndarray:
    """The coordinate values along `dim`, or indices when the dataset has none."""
    if dim in dataset.coords:
        return np.asarray(dataset[dim].values)
    return np.arange(dataset.sizes[dim])


def _read_dataset(where: str, path: str, names: Names):
    """`(x [N, H, W], y [N, h, w, C], axes)` of a netCDF file or zarr store, as stored."""
    with _open_dataset(where, path) as dataset:
        field, _ = _variable(
            where, dataset, names.field, (names.time, *names.fine), "data.field_var", 0
        )
        field = real_float32(where, f"variable {names.field!r}", field, "(time, lat, lon)")
        predictors, channels = [], []
        for name in names.predictors:
            values, rest = _variable(
                where, dataset, name, (names.time, *names.coarse), "data.predictor_vars", 1
            )
            values = real_float32(where, f"variable {name!r}", values, "(time, lat, lon)")
            if rest:
                labels = _axis_values(dataset, rest[0])
                channels += [f"{name}[{label}]" for label in labels]
            else:
                values = values[..., None]
                channels.append(name)
            predictors.append(values)
        axes = {
            "time": _axis_values(dataset, names.time),
            "fine": tuple(_axis_values(dataset, d) for d in names.fine),
            "coarse": tuple(_axis_values(dataset, d) for d in names.coarse),
            "channels": tuple(channels),
            "field_attrs": dict(dataset[names.field].attrs),
        }
    return field, np.concatenate(predictors, axis=-1), axes


def _check_pair(where: str, x: np.ndarray, y: np.ndarray) -> None:
    """Sample counts, grids and the fine/coarse ratio of checked float arrays."""
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"{where}: x has {x.shape[0]} samples but y has {y.shape[0]}; they must match"
        )
    (_, height, width), (_, coarse_h, coarse_w, _) = x.shape, y.shape
    if height % coarse_h or width % coarse_w or height // coarse_h != width // coarse_w:
        raise ConfigError(
            f"{where}: x grid {height}x{width} is not a whole multiple of the y grid "
            f"{coarse_h}x{coarse_w} with the same factor along both axes"
        )
    negative = x < 0
    if negative.any():
        raise ConfigError(
            f"{where}: array 'x' holds {int(negative.sum())} negative precipitation values "
            f"(first at index {tuple(int(i) for i in np.argwhere(negative)[0])})"
        )


def load_source(
    path: str, *, val_fraction: float, test_fraction: float, names: Names
) -> tuple[dict[str, dict[str, np.ndarray]], Coordinates]:
    """Reads user data from `path` and splits it into contiguous train/val/test blocks.

    Args:
      path: a `.npz` file with `x` `[N, H, W]` (precipitation, finite, `>= 0`) and `y`
        `[N, h, w, C]` (finite), or a netCDF file / zarr store with the variables `names`
        names (module docstring); `H / h = W / w` a whole number.
      val_fraction: share of the samples in the val split, in `(0, 1)`.
      test_fraction: share of the samples in the test split (the last ones), in `(0, 1)`.
      names: the variable and dim names of a netCDF or zarr source (and of the coordinates
        given for a `.npz` file).

    Returns:
      The splits, as `generate` returns them (float32), and their `Coordinates`.

    Raises:
      ConfigError: one line naming the file, the array and what is wrong with it.
    """
    where = f"data.source {path}"
    if not os.path.exists(path):
        raise MissingInputError(f"{where}: no such file")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.{name} must lie in (0, 1), got {fraction!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1, got "
            f"{val_fraction} + {test_fraction}"
        )
    axes = None
    if path.endswith(".npz") and os.path.isfile(path):
        raw = read_npz(where, path, ("x", "y"), "x [N, H, W] and y [N, h, w, C]")
        x = real_float32(where, "array 'x'", raw["x"], "[N, H, W]")
        y = real_float32(where, "array 'y'", raw["y"], "[N, h, w, C]")
        for name, values, rank, layout in (("x", x, 3, "[N, H, W]"), ("y", y, 4, "[N, h, w, C]")):
            if values.ndim != rank:
                raise ConfigError(
                    f"{where}: array {name!r} has shape {values.shape}; expected {layout}"
                )
    elif (path.endswith(".nc") and os.path.isfile(path)) or is_zarr(path):
        x, y, axes = _read_dataset(where, path, names)
    else:
        raise ConfigError(
            f"{where}: expected a .npz file, a netCDF .nc file or a .zarr store "
            "(docs/cvae.md, 'Your own data')"
        )
    _check_pair(where, x, y)
    n = x.shape[0]
    num_test = math.ceil(test_fraction * n)
    num_val = math.ceil(val_fraction * n)
    num_train = n - num_val - num_test
    if num_train < 1:
        raise ConfigError(f"{where}: {n} samples are too few to split into train, val and test")
    bounds = {
        "train": (0, num_train),
        "val": (num_train, num_train + num_val),
        "test": (num_train + num_val, n),
    }
    splits = {name: {"x": x[a:b], "y": y[a:b]} for name, (a, b) in bounds.items()}
    if axes is None:
        return splits, index_coordinates(splits, names)
    coordinates = Coordinates(
        names=names,
        time={name: axes["time"][a:b] for name, (a, b) in bounds.items()},
        fine=axes["fine"],
        coarse=axes["coarse"],
        channels=axes["channels"],
        field_attrs=axes["field_attrs"],
    )
    return splits, coordinates
