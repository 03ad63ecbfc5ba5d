"""The surface-segmentation task (seed 003) as the harness sees it.

Patches `[batch, P, P, P]` of a CT-like volume -> papyrus logits of the same shape. The
splits hold training patches sampled from the training volumes and non-overlapping tiles
of the held-out volumes, each with its labels and the labels' signed distance map (for
the boundary loss; a function of the labels only, so it is computed once here). The
loss is the seed's compound loss declared with `jaxguard.losses.compose`: soft dice,
focal (alpha from the data, inverse-frequency class weights per voxel), boundary, soft
clDice and connectivity, each with its weight in `config.loss`.

Metrics: `SurfaceMetrics` = the streaming confusion counts of `SegmentationMetrics`
(dice, iou, precision, recall, predicted and true foreground fractions) plus `cldice`,
the mean over patches of the clDice of the thresholded prediction. Connected components
only make sense on whole volumes, so they are counted on the host in `export`, after
sliding-window inference over the full test volumes, and reported there.

Guards: `PlateauGuard` (train and validation loss both flat early in training, the
seed's "stuck at 0.40 from epoch 0 to 49") and `MajorityClassGuard` (the prediction is
one class, or carries no information beyond the prior).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from ml_collections import ConfigDict
from scipy import ndimage, special

from jaxguard import guards as guards_lib
from jaxguard import losses
from jaxguard.config import ConfigError
from jaxguard.metrics import COUNT_DTYPE, STATE_DTYPE, SegmentationMetrics
from jaxguard.tasks.surface import data as data_lib
from jaxguard.tasks.surface import inference
from jaxguard.tasks.surface.model import NORMS, PatchAugment, SurfaceSegmenter, UNet3D

# (label, validation metric key) pairs of the per-epoch console line.
EPOCH_LINE = (
    ("dice", "dice"),
    ("clDice", "cldice"),
    ("fg pred", "fg_fraction_pred"),
    ("fg true", "fg_fraction_true"),
)
# Metrics of the fixed validation batch logged every `log.diagnostics_every_steps`.
DIAGNOSTIC_KEYS = ("dice", "cldice", "fg_fraction_pred")

# Loss terms; `config.loss.<name>_weight` weighs each (0 leaves it out).
TERM_NAMES = ("dice", "focal", "boundary", "cldice", "connectivity")
# The seed's figures, quoted next to ours in the startup lines.
SEED_FOREGROUND = (0.66, 0.27, 0.92)  # mean, lowest, highest per-sample foreground fraction
SEED_CLASS_WEIGHTS = (1.94, 0.52)  # (background, foreground) as configured in the seed
# Arrays that the training-time augmentation transforms together.
_AUGMENTED = ("volume", "labels", "signed_distance")
# Patches per signed-distance call: a fixed shape, so the map compiles once.
_DISTANCE_CHUNK = 32
_THRESHOLD = 0.5

_signed_distance = jax.jit(losses.signed_distance_map)


# ----------------------------------------------------------------------------- metrics


def _safe_ratio(numerator: jax.Array, denominator: jax.Array, empty: float) -> jax.Array:
    """`numerator / denominator`, and `empty` where the denominator is 0."""
    # Double where: the unused branch never divides by zero, so no NaN leaks into gradients.
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, numerator / safe, empty)


def binary_cldice(predicted: jax.Array, truth: jax.Array, *, iterations: int) -> jax.Array:
    """clDice of binary masks (Shit et al. 2021), per example.

    With morphological skeletons `S` (`losses.soft_skeleton` of the binary masks):
    `Tprec = |S(P) & T| / |S(P)|`, `Tsens = |S(T) & P| / |S(T)|` and
    `clDice = 2 Tprec Tsens / (Tprec + Tsens)`. An empty skeleton makes its ratio 1
    (there is nothing to miss); with both ratios 0 the score is 0.

    Args:
      predicted: `[batch, *spatial]` predicted mask in {0, 1}, floating.
      truth: `[batch, *spatial]` true mask in {0, 1}, floating.
      iterations: soft-skeleton erosion steps (a Python int).

    Returns:
      `[batch]` clDice in [0, 1] (1 is best).
    """
    axes = tuple(range(1, predicted.ndim))
    skeleton_pred = losses.soft_skeleton(predicted, iterations=iterations)
    skeleton_true = losses.soft_skeleton(truth, iterations=iterations)
    # An empty skeleton has nothing to miss: its ratio is 1.
    precision = _safe_ratio(
        jnp.sum(skeleton_pred * truth, axis=axes), jnp.sum(skeleton_pred, axis=axes), 1.0
    )
    sensitivity = _safe_ratio(
        jnp.sum(skeleton_true * predicted, axis=axes), jnp.sum(skeleton_true, axis=axes), 1.0
    )
    return _safe_ratio(2.0 * precision * sensitivity, precision + sensitivity, 0.0)


@struct.dataclass
class SurfaceMetrics:
    """`SegmentationMetrics` plus the mean clDice of the thresholded predictions per patch.

    The clDice part is a sum and a count of per-example values, so `merge` is exact and
    the result is the mean over all examples seen, whatever the batching. `compute()`
    returns SegmentationMetrics' keys plus `cldice` (NaN before any example).
    """

    segmentation: SegmentationMetrics
    cldice_sum: jax.Array
    examples: jax.Array
    iterations: int = struct.field(pytree_node=False)

    @classmethod
    def empty(cls, *, iterations: int, threshold: float = _THRESHOLD) -> SurfaceMetrics:
        return cls(
            segmentation=SegmentationMetrics.empty(threshold),
            cldice_sum=jnp.zeros((), STATE_DTYPE),
            examples=jnp.zeros((), COUNT_DTYPE),
            iterations=iterations,
        )

    def update(self, probs: jax.Array, labels: jax.Array) -> SurfaceMetrics:
        """Adds a batch of `[batch, D, H, W]` probabilities and {0, 1} labels. Jittable."""
        predicted = (probs > self.segmentation.threshold).astype(STATE_DTYPE)
        truth = (labels >= 0.5).astype(STATE_DTYPE)
        scores = binary_cldice(predicted, truth, iterations=self.iterations)
        return self.replace(
            segmentation=self.segmentation.update(probs, labels),
            cldice_sum=self.cldice_sum + jnp.sum(scores),
            examples=self.examples + scores.shape[0],
        )

    def merge(self, other: SurfaceMetrics) -> SurfaceMetrics:
        if self.iterations != other.iterations:
            raise ValueError(
                f"SurfaceMetrics.merge: iterations differ ({self.iterations} vs "
                f"{other.iterations}); the clDice values are not comparable."
            )
        return self.replace(
            segmentation=self.segmentation.merge(other.segmentation),
            cldice_sum=self.cldice_sum + other.cldice_sum,
            examples=self.examples + other.examples,
        )

    def compute(self) -> dict[str, float]:
        examples = int(jax.device_get(self.examples))
        cldice = float(jax.device_get(self.cldice_sum)) / examples if examples else math.nan
        return {**self.segmentation.compute(), "cldice": cldice}


def all_foreground_dice(labels: np.ndarray) -> float:
    """Dice of predicting every voxel foreground: `2 f / (1 + f)` for foreground fraction f."""
    fraction = float(np.mean(np.asarray(labels) >= 0.5))
    return 2.0 * fraction / (1.0 + fraction)


# ----------------------------------------------------------------------------- guards


class PlateauGuard:
    """Warns when train and validation loss both stay flat for `patience` epochs, early on.

    After each evaluation it keeps the longest run of recent epochs over which both losses
    are flat: for each loss, `(max - min) / mean(|loss|) <= tolerance`. When that run
    reaches `patience` epochs and began before epoch `start_within` (a plateau later on is
    convergence, not a stuck start), it warns with the figures, and again every `patience`
    epochs while the run lasts, so the message grows to the seed's "stuck at 0.40 from
    epoch 0 to 49". Non-finite losses end a run (the non-finite guard reports those).

    Called by the harness with the validation metrics (`loss`) and `train_loss`.
    """

    name = "plateau"

    def __init__(self, *, patience: int, tolerance: float, start_within: int):
        owner = type(self).__name__
        self.patience = guards_lib.check_count(owner, "patience", patience, 2)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"{owner}: `tolerance` must be finite and >= 0, got {tolerance}.")
        self.tolerance = float(tolerance)
        self.start_within = guards_lib.check_count(owner, "start_within", start_within, 1)
        self._start: int | None = None  # first epoch of the current flat run
        self._train: list[float] = []
        self._val: list[float] = []
        self._last_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: ConfigDict) -> PlateauGuard:
        return cls(patience=cfg.patience, tolerance=cfg.tolerance, start_within=cfg.start_within)

    def _spread(self, values: list[float]) -> float:
        scale = float(np.mean(np.abs(values)))
        # A loss flat at exactly 0 has not moved at all.
        return (max(values) - min(values)) / scale if scale > 0 else 0.0

    def _flat(self) -> bool:
        return max(self._spread(self._train), self._spread(self._val)) <= self.tolerance

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        epoch = guards_lib.check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, None
        )
        self._last_epoch = epoch
        train, val = float(metrics["train_loss"]), float(metrics["loss"])
        if not (math.isfinite(train) and math.isfinite(val)):
            self._start, self._train, self._val = None, [], []
            return None
        if self._start is None:
            self._start = epoch
        self._train.append(train)
        self._val.append(val)
        # Drop the oldest epochs until the remaining run is flat again.
        while len(self._train) > 1 and not self._flat():
            self._train.pop(0)
            self._val.pop(0)
            self._start += 1
        length = len(self._train)
        if self._start >= self.start_within or length < self.patience:
            return None
        if (length - self.patience) % self.patience:
            return None
        return guards_lib.GuardEvent(
            self.name,
            "warn",
            f"loss plateau: train loss stuck at {np.mean(self._train):.2f} "
            f"({min(self._train):.3g}-{max(self._train):.3g}) and val loss at "
            f"{np.mean(self._val):.2f} ({min(self._val):.3g}-{max(self._val):.3g}) from epoch "
            f"{self._start} to {epoch} ({length} epochs; spread "
            f"{self._spread(self._train):.1%} and {self._spread(self._val):.1%} of the level, "
            f"tolerance {self.tolerance:.0%}); check the learning rate, the warm-up and the "
            "class balance",
            epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "tolerance": self.tolerance,
            "start": self._start,
            "train": list(self._train),
            "val": list(self._val),
            "last_epoch": self._last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        guards_lib.check_state_matches(
            type(self).__name__, state, patience=self.patience, tolerance=self.tolerance
        )
        self._start = state["start"]
        self._train = list(state["train"])
        self._val = list(state["val"])
        self._last_epoch = state["last_epoch"]


class MajorityClassGuard:
    """Warns when the validation prediction is one class, or no better than the prior.

    From `start_epoch` on, an evaluation is suspicious when the predicted foreground
    fraction is within `margin` of 0 or 1 (one class everywhere), or within `margin` of the
    training prior while the precision is within `margin` of the true foreground fraction
    (a prediction independent of the labels has exactly that precision: the foreground it
    marks is no purer than a random pick). After `patience` suspicious evaluations in a
    row it warns, then every `patience` evaluations while it lasts; dice is quoted next to
    the dice of predicting all foreground.
    """

    name = "majority_class"

    def __init__(self, *, prior: float, margin: float, patience: int, start_epoch: int):
        owner = type(self).__name__
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"{owner}: `prior` must lie in [0, 1], got {prior}.")
        if not 0.0 < margin < 0.5:
            raise ValueError(f"{owner}: `margin` must lie in (0, 0.5), got {margin}.")
        self.prior = float(prior)
        self.margin = float(margin)
        self.patience = guards_lib.check_count(owner, "patience", patience, 1)
        self.start_epoch = guards_lib.check_count(owner, "start_epoch", start_epoch, 0)
        self._count = 0
        self._last_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: ConfigDict, prior: float) -> MajorityClassGuard:
        return cls(
            prior=prior, margin=cfg.margin, patience=cfg.patience, start_epoch=cfg.start_epoch
        )

    def _diagnosis(self, metrics: Mapping[str, float]) -> str | None:
        predicted = float(metrics["fg_fraction_pred"])
        true = float(metrics["fg_fraction_true"])
        precision = float(metrics["precision"])
        if predicted <= self.margin:
            return "predicting (almost) only background"
        if predicted >= 1.0 - self.margin:
            return "predicting (almost) only foreground"
        # NaN precision (nothing predicted) is covered above; here it compares False.
        if abs(predicted - self.prior) <= self.margin and abs(precision - true) <= self.margin:
            return (
                f"predicting foreground at the prior's rate with precision {precision:.3f} "
                f"= the true foreground fraction, i.e. independently of the labels"
            )
        return None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> guards_lib.GuardEvent | None:
        epoch = guards_lib.check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, None
        )
        self._last_epoch = epoch
        if epoch < self.start_epoch:
            return None
        diagnosis = self._diagnosis(metrics)
        if diagnosis is None:
            self._count = 0
            return None
        self._count += 1
        if self._count < self.patience or (self._count - self.patience) % self.patience:
            return None
        true = float(metrics["fg_fraction_true"])
        return guards_lib.GuardEvent(
            self.name,
            "warn",
            f"majority class: {diagnosis} for {self._count} evaluations (epoch {epoch}): "
            f"predicted foreground fraction {float(metrics['fg_fraction_pred']):.3f} vs true "
            f"{true:.3f} (training prior {self.prior:.3f}); dice {float(metrics['dice']):.3f} "
            f"vs {2 * true / (1 + true):.3f} for predicting all foreground",
            epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior, "count": self._count, "last_epoch": self._last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        guards_lib.check_state_matches(type(self).__name__, state, prior=self.prior)
        self._count = state["count"]
        self._last_epoch = state["last_epoch"]


# ----------------------------------------------------------------------------- data


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_config(config: ConfigDict) -> None:
    d, m = config.data, config.model
    _require(
        d.patch_size >= 2 and d.patch_size % 2**m.depth == 0,
        f"data.patch_size={d.patch_size} must be divisible by 2**model.depth = {2**m.depth}",
    )
    _require(
        d.source or d.patch_size <= d.volume_size,
        f"data.patch_size={d.patch_size} is larger than data.volume_size={d.volume_size}",
    )
    _require(d.num_train_volumes >= 1, "data.num_train_volumes must be >= 1")
    for key in ("num_val_volumes", "num_test_volumes", "train_patches"):
        _require(d[key] >= 1, f"data.{key} must be >= 1, got {d[key]}")
    low, high = d.sheet_spacing
    _require(0 < low <= high, "data.sheet_spacing must be (low, high) with 0 < low <= high")
    _require(0 < d.fill_mean < 1, f"data.fill_mean must lie in (0, 1), got {d.fill_mean}")
    _require(d.blur > 0, f"data.blur must be > 0, got {d.blur}")
    _require(
        0 <= d.foreground_centre_prob <= 1,
        f"data.foreground_centre_prob must lie in [0, 1], got {d.foreground_centre_prob}",
    )
    _require(
        0 <= d.window_overlap < 1, f"data.window_overlap must lie in [0, 1), got {d.window_overlap}"
    )
    _require(
        d.window_blend in inference.BLENDS,
        f"data.window_blend must be one of {', '.join(inference.BLENDS)}, got {d.window_blend!r}",
    )
    _require(m.norm in NORMS, f"model.norm must be one of {', '.join(NORMS)}, got {m.norm!r}")
    alpha = config.loss.focal_alpha
    _require(alpha is None or 0 <= alpha <= 1, f"loss.focal_alpha must lie in [0, 1], got {alpha}")


def signed_distance_maps(labels: np.ndarray) -> np.ndarray:
    """`losses.signed_distance_map` of `[N, D, H, W]` labels, in fixed-size chunks."""
    maps = []
    for start in range(0, len(labels), _DISTANCE_CHUNK):
        chunk = labels[start : start + _DISTANCE_CHUNK]
        padded = np.zeros((_DISTANCE_CHUNK, *chunk.shape[1:]), np.float32)
        padded[: len(chunk)] = chunk
        maps.append(np.asarray(_signed_distance(padded))[: len(chunk)])
    return np.concatenate(maps)


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """Training patches and tiles of the held-out volumes, with signed distance maps."""
    _check_config(config)
    d = config.data
    volumes = data_lib.volumes_for(d, config.seed)
    # The patch sampler has its own stream, independent of the volumes' streams.
    patch_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(4)[3])
    splits = {
        "train": data_lib.sample_patches(
            patch_rng,
            volumes["train"],
            count=d.train_patches,
            size=d.patch_size,
            foreground_prob=d.foreground_centre_prob,
        ),
        "val": data_lib.tile_volumes(volumes["val"], d.patch_size),
        "test": data_lib.tile_volumes(volumes["test"], d.patch_size),
    }
    for split in splits.values():
        split["signed_distance"] = signed_distance_maps(split["labels"])
    return splits


def foreground_prior(splits) -> float:
    """Foreground fraction of the training patches (what the loss sees)."""
    return float(np.mean(splits["train"]["labels"]))


def audit(config: ConfigDict, splits) -> dict[str, Any]:
    """Foreground balance of every split and the focal settings it implies (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures: `patches`,
      `fg_fraction` (papyrus share of all voxels), the per-patch papyrus share's `min`,
      `q05`, `median`, `q95` and `max`, `empty_patches` and `full_patches` (no / only
      papyrus), and `all_foreground_dice` = `2 f / (1 + f)`, the dice of predicting
      papyrus everywhere (the majority-class baseline the seed's plateau sat near).
    """
    result: dict[str, Any] = {}
    for name, split in splits.items():
        labels = np.asarray(split["labels"]) >= 0.5
        per_patch = labels.reshape(len(labels), -1).mean(axis=1)
        fraction = float(labels.mean())
        q05, median, q95 = np.quantile(per_patch, [0.05, 0.5, 0.95])
        result[name] = {
            "patches": len(labels),
            "fg_fraction": fraction,
            "min": float(per_patch.min()),
            "q05": float(q05),
            "median": float(median),
            "q95": float(q95),
            "max": float(per_patch.max()),
            "empty_patches": int(np.sum(per_patch == 0)),
            "full_patches": int(np.sum(per_patch == 1)),
            "all_foreground_dice": 2 * fraction / (1 + fraction),
        }
    train = result["train"]
    advice = [
        f"train: {train['fg_fraction']:.1%} papyrus; predicting papyrus everywhere scores dice "
        f"{train['all_foreground_dice']:.3f} on it, so a dice near that is the majority class, "
        "not a model"
    ]
    if 0 < train["fg_fraction"] < 1:
        alpha, weights = focal_settings(config, splits)
        source = "from the data" if config.loss.focal_alpha is None else "loss.focal_alpha"
        advice.append(f"focal alpha {alpha:.3f} ({source}: 1 - the train papyrus share)")
        if weights is None:
            advice.append("class weights off (loss.use_class_weights=False)")
        else:
            advice.append(
                f"class weights w_c = 1 / (K f_c): background {weights[0]:.3f}, papyrus "
                f"{weights[1]:.3f} (loss.use_class_weights=False turns them off)"
            )
    else:
        advice.append(
            "train holds one class only: the loss cannot learn a boundary; change "
            "data.foreground_centre_prob or the data"
        )
    for name in ("val", "test"):
        if name in result and abs(result[name]["fg_fraction"] - train["fg_fraction"]) > 0.15:
            advice.append(
                f"{name} is {result[name]['fg_fraction']:.1%} papyrus against train's "
                f"{train['fg_fraction']:.1%}: the patch sampler (data.foreground_centre_prob) "
                "shifts the balance the loss sees"
            )
    result["recommendations"] = advice
    return result


# ----------------------------------------------------------------------------- model and loss


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> SurfaceSegmenter:
    m, d = config.model, config.data
    bias = m.head_bias_init
    if bias is None:  # Start at the prior: no steps spent learning the class balance.
        bias = float(special.logit(np.clip(foreground_prior(splits), 1e-3, 1 - 1e-3)))
    unet = UNet3D(
        initial_filters=m.initial_filters,
        depth=m.depth,
        norm=m.norm,
        norm_groups=m.norm_groups,
        dropout=m.dropout,
        head_bias_init=bias,
        rngs=rngs,
    )
    augment = PatchAugment(
        flips=d.augment_flips,
        rotations=d.augment_rotations,
        intensity_jitter=d.intensity_jitter,
        rngs=rngs.dropout,
    )
    return SurfaceSegmenter(unet=unet, augment=augment)


def weighted_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | None,
    gamma: float,
    class_weights: jax.Array | None,
) -> jax.Array:
    """`sigmoid_focal_loss` per voxel, times `binary_class_weight_map` when weights are given.

    Returns:
      `[batch, D, H, W]` per-voxel loss; the composite averages it per example.
    """
    loss = losses.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)
    if class_weights is None:
        return loss
    return loss * losses.binary_class_weight_map(labels, class_weights)


def focal_settings(config: ConfigDict, splits) -> tuple[float, np.ndarray | None]:
    """`(alpha, class weights or None)` of the focal term, from the config and the train data."""
    labels = splits["train"]["labels"] >= 0.5
    alpha = config.loss.focal_alpha
    if alpha is None:
        alpha = 1.0 - float(labels.mean())
    if not config.loss.use_class_weights:
        return alpha, None
    counts = np.array([np.sum(~labels), np.sum(labels)], np.float64)
    if counts.min() == 0:
        absent = "foreground" if counts[1] == 0 else "background"
        raise ConfigError(
            f"loss.use_class_weights: the training patches have no {absent} voxels; set it to "
            "False or change the data"
        )
    return alpha, np.asarray(losses.class_weights(counts), np.float32)


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    del steps_per_epoch  # The seed's weights are constant.
    cfg = config.loss
    alpha, weights = focal_settings(config, splits)
    focal = functools.partial(
        weighted_focal_loss,
        alpha=alpha,
        gamma=cfg.focal_gamma,
        class_weights=None if weights is None else jnp.asarray(weights),
    )
    # name -> (per-example or per-voxel loss, the loss inputs it takes)
    candidates = {
        "dice": (
            functools.partial(losses.soft_dice_loss, smooth=cfg.dice_smooth),
            ("logits", "labels"),
        ),
        "focal": (focal, ("logits", "labels")),
        "boundary": (losses.boundary_loss, ("logits", "signed_distance")),
        "cldice": (
            functools.partial(
                losses.soft_cldice_loss,
                iterations=cfg.cldice_iterations,
                smooth=cfg.cldice_smooth,
            ),
            ("logits", "labels"),
        ),
        "connectivity": (losses.connectivity_loss, ("logits", "labels")),
    }
    terms = {
        name: losses.Term(candidates[name][0], inputs=candidates[name][1], weight=weight)
        for name in TERM_NAMES
        if (weight := cfg[f"{name}_weight"]) > 0
    }
    if not terms:
        raise ConfigError("loss: every term weight is 0; give at least one a weight > 0")
    return losses.compose(**terms)


def make_guards(config: ConfigDict, splits) -> dict[str, Any]:
    cfg = config.loss
    guards = {}
    if cfg.plateau_guard.enabled:
        guards[PlateauGuard.name] = PlateauGuard.from_config(cfg.plateau_guard)
    if cfg.majority_guard.enabled:
        guards[MajorityClassGuard.name] = MajorityClassGuard.from_config(
            cfg.majority_guard, foreground_prior(splits)
        )
    return guards


def startup_lines(config: ConfigDict, splits) -> list[str]:
    fractions = splits["train"]["labels"].mean(axis=(1, 2, 3))
    prior = foreground_prior(splits)
    alpha, weights = focal_settings(config, splits)
    seed_mean, seed_low, seed_high = SEED_FOREGROUND
    lines = [
        f"train patches: {len(fractions)} of {config.data.patch_size}^3 voxels, foreground "
        f"fraction {prior:.3f} (per patch {fractions.min():.2f}-{fractions.max():.2f}; the seed "
        f"reported {seed_mean:.2f}, {seed_low:.2f}-{seed_high:.2f})",
        f"focal alpha {alpha:.3f}"
        + (" (1 - train foreground fraction)" if config.loss.focal_alpha is None else "")
        + f": foreground voxels weigh {alpha:.3f}, background {1 - alpha:.3f}",
    ]
    background_focal = 1.0 - alpha
    foreground_focal = alpha
    if weights is None:
        lines.append("class weights: off (loss.use_class_weights = False)")
    else:
        seed_bg, seed_fg = SEED_CLASS_WEIGHTS
        lines.append(
            f"class weights (background, foreground) = ({weights[0]:.3f}, {weights[1]:.3f}) "
            f"from train frequencies ({1 - prior:.3f}, {prior:.3f}), ratio "
            f"{weights[0] / weights[1]:.2f}; applied per voxel to the focal term (the seed's "
            f"({seed_bg}, {seed_fg}) has ratio {seed_bg / seed_fg:.2f}, the square of its "
            "class ratio)"
        )
        background_focal *= float(weights[0])
        foreground_focal *= float(weights[1])
    lines.append(
        f"focal weight per voxel: background {background_focal:.3f}, foreground "
        f"{foreground_focal:.3f} (ratio {background_focal / max(foreground_focal, 1e-12):.2f})"
    )
    if weights is not None and alpha != 0.5:
        lines.append(
            "warning: alpha and the class weights both re-weight the classes, so their effects "
            "multiply; set loss.focal_alpha = 0.5 or loss.use_class_weights = False to apply "
            "one of them"
        )
    lines.append(
        f"all-foreground baseline: dice {all_foreground_dice(splits['val']['labels']):.3f} on "
        f"val, {all_foreground_dice(splits['test']['labels']):.3f} on test"
    )
    return lines


# ----------------------------------------------------------------------------- steps


def forward(model: SurfaceSegmenter, batch) -> dict[str, jax.Array]:
    """Logits of the (augmented, in training mode) patches, and the matching labels and maps."""
    view = model.augment({key: batch[key] for key in _AUGMENTED if key in batch})
    outputs = {"logits": model(view["volume"])}
    outputs.update({key: view[key] for key in ("labels", "signed_distance") if key in view})
    return outputs


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    del batch  # The outputs carry the labels and maps of the view the model saw.
    return {
        "logits": outputs["logits"],
        "labels": outputs["labels"],
        "signed_distance": outputs["signed_distance"],
    }


def empty_metrics(config: ConfigDict) -> SurfaceMetrics:
    return SurfaceMetrics.empty(iterations=config.loss.cldice_iterations)


def update_metrics(metrics: SurfaceMetrics, outputs, batch) -> SurfaceMetrics:
    del batch
    return metrics.update(jax.nn.sigmoid(outputs["logits"]), outputs["labels"])


def head(model: SurfaceSegmenter) -> nnx.Module:
    return model.unet.head


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    del batch
    logits = np.asarray(outputs["logits"]).ravel()
    return {"logits": logits, "probabilities": special.expit(logits)}


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    """Per test patch: true and predicted foreground fractions and the patch's dice."""
    del batch
    predicted = special.expit(np.asarray(outputs["logits"])) > _THRESHOLD
    truth = np.asarray(outputs["labels"]) >= 0.5
    axes = (1, 2, 3)
    overlap = np.sum(predicted & truth, axis=axes)
    total = np.sum(predicted, axis=axes) + np.sum(truth, axis=axes)
    # Both masks empty: perfect agreement, as in SegmentationMetrics.
    dice = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)
    return {
        "fg_fraction_true": truth.mean(axis=axes),
        "fg_fraction_pred": predicted.mean(axis=axes),
        "dice": dice,
    }


def report_lines(config: ConfigDict, splits, summary: Mapping) -> list[str]:
    test = summary["test"]
    stopped = summary["stopped_by"]
    baseline = all_foreground_dice(splits["test"]["labels"])
    source = config.data.source or "embedded volumes"
    return [
        f"surface segmentation, config {config.task} (seed {config.seed}), workdir "
        f"{summary['workdir']}",
        f"data: {source}; test split: {len(splits['test']['labels'])} tiles of "
        f"{config.data.patch_size}^3 voxels",
        f"test dice {test['dice']:.4f} (all-foreground baseline {baseline:.4f}), iou "
        f"{test['iou']:.4f}, precision {test['precision']:.4f}, recall {test['recall']:.4f}",
        f"foreground fraction predicted {test['fg_fraction_pred']:.4f} vs true "
        f"{test['fg_fraction_true']:.4f}; clDice {test['cldice']:.4f} (mean over tiles)",
        f"best epoch {summary['best_epoch']} of {summary['epochs_run']} run, "
        f"{summary['train_seconds']:.0f} s of training",
        "stopped by: " + (stopped["message"] if stopped else "the epoch budget"),
    ]


# ----------------------------------------------------------------------------- export


_binary_cldice = jax.jit(binary_cldice, static_argnames="iterations")


def volume_figures(
    predicted: np.ndarray, truth: np.ndarray, *, iterations: int
) -> dict[str, float]:
    """Whole-volume figures of a binary prediction: dice, clDice and connected components.

    Components are 6-connected (face neighbours), counted by `scipy.ndimage.label`.
    """
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = predicted.sum() + truth.sum()
    cldice = _binary_cldice(
        predicted[None].astype(np.float32), truth[None].astype(np.float32), iterations=iterations
    )
    return {
        "dice": float(2.0 * np.sum(predicted & truth) / total) if total else 1.0,
        "all_foreground_dice": all_foreground_dice(truth),
        "cldice": float(cldice[0]),
        "fg_fraction_pred": float(predicted.mean()),
        "fg_fraction_true": float(truth.mean()),
        "components_pred": int(ndimage.label(predicted)[1]),
        "components_true": int(ndimage.label(truth)[1]),
    }


def export(config: ConfigDict, workdir: str, predict, splits) -> list[str]:
    """Sliding-window inference over the full test volumes; writes the predicted masks.

    Writes `predicted_mask_<i>.npy` (uint8 `[D, H, W]`) for test volume `i` and
    `volume_metrics.json` (per-volume and pooled dice, clDice and component counts).
    """
    del splits
    d = config.data
    pairs = data_lib.volumes_for(d, config.seed)["test"]

    def predict_patch(patches: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.sigmoid(predict({"volume": patches})["logits"]))

    masks, figures = [], []
    for volume, truth in pairs:
        probs = inference.sliding_window_predict(
            predict_patch,
            volume,
            d.patch_size,
            d.window_overlap,
            d.window_blend,
            batch_size=config.eval.batch_size,
        )
        masks.append((probs > _THRESHOLD).astype(np.uint8))
        figures.append(volume_figures(masks[-1], truth, iterations=config.loss.cldice_iterations))
    all_pred = np.concatenate([m.ravel() for m in masks]).astype(bool)
    all_true = np.concatenate([t.ravel() for _, t in pairs]).astype(bool)
    pooled = {
        "dice": float(2.0 * np.sum(all_pred & all_true) / (all_pred.sum() + all_true.sum())),
        "all_foreground_dice": all_foreground_dice(all_true),
        "cldice_mean": float(np.mean([f["cldice"] for f in figures])),
        "components_pred": int(sum(f["components_pred"] for f in figures)),
        "components_true": int(sum(f["components_true"] for f in figures)),
    }
    mask_paths = []
    for index, mask in enumerate(masks):
        mask_paths.append(os.path.join(workdir, f"predicted_mask_{index}.npy"))
        np.save(mask_paths[-1], mask)
    with open(os.path.join(workdir, "volume_metrics.json"), "w") as f:
        json.dump({"pooled": pooled, "volumes": figures}, f, indent=2)
    per_volume = ", ".join(f"{f['components_pred']}/{f['components_true']}" for f in figures)
    return [
        f"sliding-window inference on {len(pairs)} test volume(s) (patch {d.patch_size}, "
        f"overlap {d.window_overlap}, {d.window_blend} blend): dice {pooled['dice']:.4f} vs "
        f"{pooled['all_foreground_dice']:.4f} for all foreground, clDice "
        f"{pooled['cldice_mean']:.4f}",
        f"connected components predicted vs true: {pooled['components_pred']} vs "
        f"{pooled['components_true']} (per volume {per_volume})",
        *(f"predicted mask: {path}" for path in mask_paths),
    ]
