"""Synthetic data for the optical-depth task: short image sequences -> one scalar.

Each sequence shows the same patch of sky in `frames` noisy frames; the target is
its optical depth. The generator is pure NumPy and knows the latent factors, so
every split also carries `oracle`, the conditional mean of the target given those
factors: the best any model can predict from the frames, up to what the frame
noise hides.

Latent factors, drawn once per sequence:
  density  `d ~ N(0, 1)`: cloud density; the blob amplitude is `0.6 exp(0.6 d)`.
  contrast `k ~ N(0, 1)`: texture contrast; the amplitude of a fine grating
    (0.25-0.35 cycles per pixel, random orientation and phase) is `0.35 exp(0.6 k)`.
  illumination (nuisance): a sky brightness `b ~ U(0.15, 0.45)` added to the whole
    frame and a gain `g ~ U(0.95, 1.05)` on it, so raw brightness alone does not
    give the density.
  geometry (nuisance): three Gaussian blobs (centres in the middle 60% of the frame,
    widths 12-16% of it) and a drift of `N(0, 0.5)` pixels per frame per axis, shared
    by blobs and grating.

Frames: frame `t` renders the drifted blobs and grating as
`g (b + a_t blobs_t + c_t grating_t) + noise N(0, 1)`, where the per-frame amplitudes
`a_t`, `c_t` jitter around the sequence's by a log-normal factor (log-std 0.1).
The jitter and the pixel noise average out over frames, so more frames carry more
information, but only if the model pools over time. Frames are returned
standardised by fixed constants, `(image - 0.55) / 0.5` (about zero mean; std 1.0
at noise 0.1, 1.3 at noise 0.3); one constant for all samples keeps brightness
informative. `noise` is in the units before that standardisation.

Target: the informative score `s = 0.8 d + 0.6 k` (unit variance) is mixed with
independent noise `e ~ N(0, 1)`, `z = sqrt(rho) s + sqrt(1 - rho) e` with
`rho = 0.84`, and mapped through a shifted log-normal transform clipped to the
seeds' range: `target = clip(-0.25 + 1.1 exp(0.45 z), 0.15, 1.95)`. The target is
thus a smooth, convex function of the latents with heteroscedastic noise, and its
statistics match the seed runs' (mean ~0.94, std ~0.48, right skew ~0.6; about 1%
of sequences clipped at 0.15 and 6% at 1.95). `oracle = E[target | d, k]` integrates
the clipped transform over `e` by Gauss-Hermite quadrature. Its R^2 against
`target` is about 0.82 on large samples (see `oracle_r2`); on a 144-sequence test
split it varies by about +-0.04 with the seed.

`signal="faint"` (seed 000's collapse, config `data.signal`) keeps the frames and
replaces the target by a weak-signal one: a haze mode that the frames do not
predict plus a cloud regime that they do. Each sequence is, independently of its
frames, a cloud with probability 0.38; otherwise its target is the haze mode
`0.7 + 0.05 v`, `v ~ N(0, 1)`. A cloud's target is
`clip(0.7 + 0.6 (exp(0.9 u) - 1), 0.15, 1.95)` with `u = sqrt(0.95) s + sqrt(0.05) e`:
right-skewed around the mode. Over all sequences the target has mean ~0.76, std
~0.35, median ~0.70 and skew ~2, and the oracle R^2 is only ~0.33: at least 62% of
every conditional distribution sits at the mode, so the conditional median (what
MAE training converges to, even with 1.5x weights above 1.2) hardly leaves 0.7,
while the conditional mean (what MSE converges to) follows the frames.

Splits are drawn from independent child streams of `seed`, so the test split is
the same whatever `num_train` and `num_val` are.

User data (`data.source`, `load_source`): an `.npz` file or a zarr group (`.zarr`) holding
`frames` `[N, T, H, W]` (real numbers, any units) and `targets` `[N]` (optical depths), with
`T = data.frames` (and `H = W = data.image_size` when `model.pretrain.epochs > 0`: the
pretraining decoder draws square frames of that size). The sequences are split in file order:
the last `data.test_fraction` form the test split and the `data.val_fraction` before them the
val split. The frames are standardised by the training split's pixel mean and std (one pair
of constants for every sequence, as the embedded frames are, so brightness stays
informative). User splits carry no `oracle`. Every problem (missing file or array, a wrong
rank, mismatched N, an empty axis, a dtype that is not real numbers, pickled objects, NaN,
infinite or huge values) is one ConfigError line naming the file and the array. zarr needs
the optional `io` extra (`pip install 'jaxguard[io]'`).
"""

from __future__ import annotations

import importlib
import math
import numbers
import os

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxguard import _checks, losses
from jaxguard.config import ConfigError, MissingInputError
from jaxguard.tasks.user_files import is_zarr, one_line, read_npz, real_float32

TARGET_MIN = 0.15
TARGET_MAX = 1.95

# Target transform: target = clip(_OFFSET + _SCALE * exp(_LOG_STD * z), TARGET_MIN, TARGET_MAX).
_OFFSET = -0.25
_SCALE = 1.1
_LOG_STD = 0.45
# Share of the variance of z explained by the informative latents.
_SIGNAL_SHARE = 0.84
# s = 0.8 d + 0.6 k has unit variance for independent standard normal d, k.
_DENSITY_WEIGHT = 0.8
_CONTRAST_WEIGHT = 0.6
_QUADRATURE_NODES = 64

# The "faint" signal (module docstring): a haze mode plus a cloud regime, in target units.
_FAINT_CLOUD_SHARE = 0.38
_FAINT_MODE = 0.7
_FAINT_HAZE_WIDTH = 0.05
_FAINT_CLOUD_SCALE = 0.6
_FAINT_CLOUD_LOG_STD = 0.9
_FAINT_SIGNAL_SHARE = 0.95
SIGNALS = ("clear", "faint")

# Rendering.
_SKY_RANGE = (0.15, 0.45)
_GAIN_RANGE = (0.95, 1.05)
_BLOB_AMPLITUDE = 0.6
_GRATING_AMPLITUDE = 0.35
_AMPLITUDE_LOG_SLOPE = 0.6
_FRAME_JITTER_LOG_STD = 0.1
_NUM_BLOBS = 3
_DRIFT_STD = 0.5
# Typical mean and spread of the rendered brightness; frames are returned standardised by them.
_FRAME_MEAN = 0.55
_FRAME_STD = 0.5

SPLITS = ("train", "val", "test")
USER_ARRAYS = ("frames", "targets")  # What a data.source file holds: [N, T, H, W] and [N].


def _check_count(name: str, value, *, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"generate: `{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"generate: `{name}` must be >= {minimum}, got {value}.")


def _informative_score(density: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """The unit-variance score of the latents that the target depends on."""
    return _DENSITY_WEIGHT * density + _CONTRAST_WEIGHT * contrast


def _target_from_latent(z: np.ndarray) -> np.ndarray:
    return np.clip(_OFFSET + _SCALE * np.exp(_LOG_STD * z), TARGET_MIN, TARGET_MAX)


def _conditional_mean(score: np.ndarray) -> np.ndarray:
    """`E[target | score]`, integrating out the target noise by Gauss-Hermite quadrature."""
    # Probabilists' Hermite nodes integrate against exp(-x^2 / 2); the weights sum to sqrt(2 pi).
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    weights = weights / weights.sum()
    z = np.sqrt(_SIGNAL_SHARE) * score[:, None] + np.sqrt(1.0 - _SIGNAL_SHARE) * nodes[None, :]
    return _target_from_latent(z) @ weights


def _render(
    rng: np.random.Generator,
    density: np.ndarray,
    contrast: np.ndarray,
    *,
    frames: int,
    image_size: int,
    noise: float,
) -> np.ndarray:
    """Noisy frames `[n, frames, image_size, image_size, 1]` of the given latents."""
    n = density.shape[0]
    size = float(image_size)
    sky = rng.uniform(_SKY_RANGE[0], _SKY_RANGE[1], size=n)
    gain = rng.uniform(_GAIN_RANGE[0], _GAIN_RANGE[1], size=n)
    centres = rng.uniform(0.2 * size, 0.8 * size, size=(n, _NUM_BLOBS, 2))
    widths = rng.uniform(0.12 * size, 0.16 * size, size=(n, _NUM_BLOBS))
    drift = rng.normal(0.0, _DRIFT_STD, size=(n, 2))
    frequency = rng.uniform(0.25, 0.35, size=n)
    orientation = rng.uniform(0.0, np.pi, size=n)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n)
    jitter = np.exp(_FRAME_JITTER_LOG_STD * rng.standard_normal(size=(2, n, frames)))
    blob_amplitude = _BLOB_AMPLITUDE * np.exp(_AMPLITUDE_LOG_SLOPE * density)[:, None] * jitter[0]
    grating_amplitude = (
        _GRATING_AMPLITUDE * np.exp(_AMPLITUDE_LOG_SLOPE * contrast)[:, None] * jitter[1]
    )

    # Frame offsets centred on the middle frame, so drift moves content both ways.
    offsets = np.arange(frames) - (frames - 1) / 2.0
    shift = offsets[None, :, None] * drift[:, None, :]  # [n, frames, 2]
    pixels = np.arange(image_size, dtype=np.float64)
    y = pixels[None, None, :, None, None]
    x = pixels[None, None, None, :, None]
    cy = centres[:, None, None, None, :, 0] + shift[:, :, None, None, None, 0]
    cx = centres[:, None, None, None, :, 1] + shift[:, :, None, None, None, 1]
    width = widths[:, None, None, None, :]
    blobs = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * width**2)).sum(-1)

    wave_y = (np.sin(orientation) * frequency)[:, None, None, None]
    wave_x = (np.cos(orientation) * frequency)[:, None, None, None]
    ys = y[..., 0] - shift[:, :, None, None, 0]
    xs = x[..., 0] - shift[:, :, None, None, 1]
    grating = np.cos(2.0 * np.pi * (wave_y * ys + wave_x * xs) + phase[:, None, None, None])

    scene = (
        sky[:, None, None, None]
        + blob_amplitude[:, :, None, None] * blobs
        + grating_amplitude[:, :, None, None] * grating
    )
    images = gain[:, None, None, None] * scene
    images = images + noise * rng.standard_normal(size=images.shape)
    # Fixed standardisation (not per-sample: that would erase the brightness signal).
    return ((images[..., None] - _FRAME_MEAN) / _FRAME_STD).astype(np.float32)


def _cloud_target(score: np.ndarray, target_noise: np.ndarray) -> np.ndarray:
    """A cloud sequence's "faint" target: right-skewed around the mode, set by `score`."""
    u = np.sqrt(_FAINT_SIGNAL_SHARE) * score + np.sqrt(1.0 - _FAINT_SIGNAL_SHARE) * target_noise
    cloud = _FAINT_MODE + _FAINT_CLOUD_SCALE * (np.exp(_FAINT_CLOUD_LOG_STD * u) - 1.0)
    return np.clip(cloud, TARGET_MIN, TARGET_MAX)


def _faint_target(
    score: np.ndarray, target_noise: np.ndarray, cloud: np.ndarray, haze_noise: np.ndarray
) -> np.ndarray:
    """The "faint" target: the cloud target where `cloud`, else the haze mode plus jitter."""
    haze = np.clip(_FAINT_MODE + _FAINT_HAZE_WIDTH * haze_noise, TARGET_MIN, TARGET_MAX)
    return np.where(cloud, _cloud_target(score, target_noise), haze)


def _faint_conditional_mean(score: np.ndarray) -> np.ndarray:
    """`E[faint target | score]`, integrating out the target noise by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    weights = weights / weights.sum()
    cloud = _cloud_target(score[:, None], nodes[None, :]) @ weights
    haze = np.clip(_FAINT_MODE + _FAINT_HAZE_WIDTH * nodes, TARGET_MIN, TARGET_MAX) @ weights
    return _FAINT_CLOUD_SHARE * cloud + (1.0 - _FAINT_CLOUD_SHARE) * haze


def _split(
    rng: np.random.Generator,
    n: int,
    *,
    frames: int,
    image_size: int,
    noise: float,
    signal: str,
) -> dict[str, np.ndarray]:
    density = rng.standard_normal(n)
    contrast = rng.standard_normal(n)
    score = _informative_score(density, contrast)
    target_noise = rng.standard_normal(n)
    frames_array = _render(
        rng, density, contrast, frames=frames, image_size=image_size, noise=noise
    )
    if signal == "clear":
        z = np.sqrt(_SIGNAL_SHARE) * score + np.sqrt(1.0 - _SIGNAL_SHARE) * target_noise
        target, oracle = _target_from_latent(z), _conditional_mean(score)
    else:
        # A child stream (spawning draws nothing from `rng`): a seed renders the same frames
        # under either signal, and the targets do not depend on frames, image_size or noise.
        regime_rng = rng.spawn(1)[0]
        cloud = regime_rng.random(n) < _FAINT_CLOUD_SHARE
        haze_noise = regime_rng.standard_normal(n)
        target = _faint_target(score, target_noise, cloud, haze_noise)
        oracle = _faint_conditional_mean(score)
    return {
        "frames": frames_array,
        "target": target.astype(np.float32),
        "oracle": oracle.astype(np.float32),
    }


def generate(
    *,
    num_train: int,
    num_val: int,
    num_test: int = 144,
    frames: int,
    image_size: int,
    noise: float,
    seed: int,
    signal: str = "clear",
) -> dict[str, dict[str, np.ndarray]]:
    """Draws the train, val and test splits of the optical-depth task.

    Args:
      num_train: sequences in the train split, `>= 1`.
      num_val: sequences in the val split, `>= 1`.
      num_test: sequences in the test split, `>= 1` (the seed runs used 144).
      frames: frames per sequence `T`, `>= 1` (the seed runs used 3, 5 or 7).
      image_size: height and width `H = W` of a frame in pixels, `>= 4`.
      noise: standard deviation of the per-pixel Gaussian noise, `>= 0`, in rendered
        brightness units (before standardisation; most rendered pixels lie in 0-2.5).
      seed: seeds the three splits' independent streams.
      signal: `"clear"` (the default target) or `"faint"` (the weak-signal haze-and-cloud
        target of the module docstring; same frames as `"clear"` for the same seed).

    Returns:
      `{"train": split, "val": split, "test": split}`, each split a dict with
      `"frames"` float32 `[N, T, H, W, 1]`, `"target"` float32 `[N]` in
      `[0.15, 1.95]` and `"oracle"` float32 `[N]`, `E[target | latent factors]`.
    """
    _check_count("num_train", num_train, minimum=1)
    _check_count("num_val", num_val, minimum=1)
    _check_count("num_test", num_test, minimum=1)
    _check_count("frames", frames, minimum=1)
    _check_count("image_size", image_size, minimum=4)
    _check_count("seed", seed, minimum=0)
    _checks.check_positive("generate", "noise", noise, allow_zero=True)
    if signal not in SIGNALS:
        raise ValueError(f"generate: `signal` must be one of {', '.join(SIGNALS)}, got {signal!r}.")

    sizes = (num_train, num_val, num_test)
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    return {
        name: _split(
            np.random.default_rng(stream),
            n,
            frames=frames,
            image_size=image_size,
            noise=noise,
            signal=signal,
        )
        for name, n, stream in zip(SPLITS, sizes, streams, strict=True)
    }


def oracle_r2(split: dict[str, np.ndarray]) -> float:
    """R^2 of the split's `oracle` against its `target`: the best R^2 to expect.

    Args:
      split: one split of `generate`, with `"oracle"` and `"target"` of shape `[N]`.

    Returns:
      `1 - sum((target - oracle)^2) / sum((target - mean(target))^2)`, computed in float64.
    """
    target = np.asarray(split["target"], np.float64)
    oracle = np.asarray(split["oracle"], np.float64)
    _checks.check_same_shape("oracle_r2", oracle=oracle, target=target)
    total = np.sum((target - target.mean()) ** 2)
    if total == 0.0:
        raise ValueError("oracle_r2: `target` is constant, so R^2 is undefined.")
    return float(1.0 - np.sum((target - oracle) ** 2) / total)


def _read_zarr(where: str, path: str) -> dict[str, np.ndarray]:
    """The arrays `frames` and `targets` of a zarr group, read whole."""
    try:
        zarr = importlib.import_module("zarr")
    except ImportError as error:
        raise ConfigError(
            f"{where}: reading zarr stores needs the zarr package, which is not installed; "
            "pip install 'jaxguard[io]'"
        ) from error
    try:
        group = zarr.open_group(store=path, mode="r")
        names = sorted(group.array_keys())
    except Exception as error:  # zarr raises ValueError subclasses, JSONDecodeError, OSError
        raise ConfigError(f"{where}: not a readable zarr group ({one_line(error)})") from None
    arrays, listed = {}, ", ".join(names) or "no arrays"
    for name in USER_ARRAYS:
        if name not in names:
            raise ConfigError(
                f"{where}: array {name!r} is missing (the group has {listed}); expected "
                "frames [N, T, H, W] and targets [N]"
            )
        try:
            arrays[name] = np.asarray(group[name][...])
        except Exception as error:  # e.g. a codec error on a corrupt chunk
            raise ConfigError(f"{where}: array {name!r}: {one_line(error)}") from None
    return arrays


def _checked(where: str, name: str, values: np.ndarray, layout: str) -> np.ndarray:
    """`values` as float32 after the rank, dtype, size and value checks."""
    if values.ndim != len(layout.split(",")):
        raise ConfigError(f"{where}: array {name!r} has shape {values.shape}; expected {layout}")
    return real_float32(where, f"array {name!r}", values, layout)


def load_source(
    path: str,
    *,
    val_fraction: float,
    test_fraction: float,
    frames: int,
    square_size: int | None,
) -> dict[str, dict[str, np.ndarray]]:
    """User sequences from `path`, split in file order and standardised (module docstring).

    Args:
      path: an `.npz` file or a zarr group with `frames` `[N, T, H, W]` and `targets` `[N]`.
      val_fraction: share of the sequences in the val split, in `(0, 1)`.
      test_fraction: share in the test split (the last sequences), in `(0, 1)`.
      frames: the `T` the model is built for (`data.frames`).
      square_size: when set, frames must be `square_size x square_size` (pretraining).

    Returns:
      `{"train"|"val"|"test": {"frames": [n, T, H, W, 1], "target": [n]}}`, float32, the
      frames standardised by the training split's pixel mean and std.

    Raises:
      ConfigError: one line naming the file, the array and what is wrong with it.
    """
    where = f"data.source {path}"
    if not os.path.exists(path):
        raise MissingInputError(f"{where}: no such file")
    if path.endswith(".npz") and os.path.isfile(path):
        raw = read_npz(where, path, USER_ARRAYS, "frames [N, T, H, W] and targets [N]")
    elif is_zarr(path):
        raw = _read_zarr(where, path)
    else:
        raise ConfigError(
            f"{where}: expected a .npz file or a .zarr store with frames [N, T, H, W] and "
            "targets [N] (docs/optical_depth.md)"
        )
    sequences = _checked(where, "frames", raw["frames"], "[N, T, H, W]")
    targets = _checked(where, "targets", raw["targets"], "[N]")
    n, length, height, width = sequences.shape
    if len(targets) != n:
        raise ConfigError(
            f"{where}: frames hold {n} sequences but targets has {len(targets)} values; they "
            "must match"
        )
    if length != frames:
        raise ConfigError(
            f"{where}: frames hold {length} frames per sequence but data.frames={frames}; set "
            f"--cfg.data.frames={length} (and model.attention_scales to windows <= {length})"
        )
    if square_size is not None and (height, width) != (square_size, square_size):
        raise ConfigError(
            f"{where}: frames are {height} x {width} but pretraining (model.pretrain.epochs > 0) "
            f"decodes {square_size} x {square_size} frames; set --cfg.data.image_size to a "
            "square size that matches or --cfg.model.pretrain.epochs=0"
        )
    num_test = math.ceil(test_fraction * n)
    num_val = math.ceil(val_fraction * n)
    num_train = n - num_val - num_test
    if num_train < 1:
        raise ConfigError(f"{where}: {n} sequences are too few to split into train, val and test")
    train = sequences[:num_train].astype(np.float64)
    mean, std = train.mean(), train.std()
    # Constant training frames have no contrast to keep: centre them and leave the scale alone.
    standardised = ((sequences - mean) / (std if std > 0 else 1.0)).astype(np.float32)[..., None]
    bounds = {
        "train": (0, num_train),
        "val": (num_train, num_train + num_val),
        "test": (num_train + num_val, n),
    }
    return {
        name: {"frames": standardised[a:b], "target": targets[a:b]}
        for name, (a, b) in bounds.items()
    }


def check_source_config(config: ConfigDict) -> None:
    """`data.source` and its split fractions: one ConfigError naming the first bad key."""
    d = config.data
    if not isinstance(d.source, str):
        raise ConfigError(f"data.source must be a path or '', got {d.source!r}")
    if not d.source:
        return
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 < d[key] < 1.0:
            raise ConfigError(f"data.{key} must lie in (0, 1), got {d[key]!r}")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1, got {d.val_fraction} + "
            f"{d.test_fraction}"
        )


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """The embedded data or the user's (`data.source`), plus per-example loss weights from
    `loss.overweight_*`."""
    d = config.data
    if d.source:
        splits = load_source(
            d.source,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            frames=d.frames,
            square_size=d.image_size if config.model.pretrain.epochs > 0 else None,
        )
    else:
        splits = generate(
            num_train=d.num_train,
            num_val=d.num_val,
            num_test=d.num_test,
            frames=d.frames,
            image_size=d.image_size,
            noise=d.noise,
            seed=config.seed,
            signal=d.signal,
        )
    for split in splits.values():
        split["weight"] = np.asarray(
            losses.overweight_high_targets(
                jnp.asarray(split["target"]),
                threshold=config.loss.overweight_threshold,
                overweight_factor=config.loss.overweight_factor,
            )
        )
    return splits
