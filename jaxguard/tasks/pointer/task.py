"""The sequential object-pointing task (seed 004) as the harness sees it.

Image with the first `k` objects marked -> the next object's normalised `(x, y)`
and a done logit (see `data` for the examples, `coords` for the coordinate
convention, `model` for the network). The loss is declared with the
composition API:

    spatial: distance hinge (continuous, `loss.spatial="hinge"`) or the seed's
             discontinuous version (`"seed_hinge"`), threshold `loss.threshold` in
             `loss.threshold_units`; mean over pointing steps only (final steps
             have no next object)
    done:    `loss.done_weight` x binary cross-entropy with `pos_weight`
             (`loss.pos_weight="auto"`: `(1 - rate) / rate` of the training split)

Task guards: `head_gradients` checks the first epoch's gradient norm of the x, y
and done heads against `model.head_grad_band`; `done_never_predicted` warns when
no done validation example gets a done probability above 0.5 for
`model.done_guard_patience` evaluations in a row. `audit` reports the done balance
per split for `python -m jaxguard.audit`.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from ml_collections import ConfigDict

from jaxguard import config as config_lib
from jaxguard import losses
from jaxguard.guards import GuardEvent
from jaxguard.losses._pointing import split_distance
from jaxguard.metrics import DONE_THRESHOLD, PointingMetrics
from jaxguard.tasks.pointer import coords, render
from jaxguard.tasks.pointer import data as data_lib
from jaxguard.tasks.pointer.model import PointerNet

# (label, validation metric key) pairs of the per-epoch console line.
EPOCH_LINE = (
    ("px median", "pixel_error_median"),
    ("px p90", "pixel_error_p90"),
    ("done F1", "done_f1"),
    ("done p max", "done_prob_max_positive"),
)
# Metrics of the fixed validation batch logged every `log.diagnostics_every_steps`.
DIAGNOSTIC_KEYS = ("pixel_error_median", "done_prob_mean", "done_prob_std")
HEADS = ("x_head", "y_head", "done_head")
NUM_IMAGES = 4  # Validation examples drawn for TensorBoard each epoch (the first ones).
_SPATIAL_CHOICES = ("hinge", "seed_hinge")
_NORMS = ("l2", "l1")


# ----------------------------------------------------------------------------- loss


def seed_discontinuous_hinge(
    pred: jax.Array, target: jax.Array, *, threshold: float, norm: str = "l1"
) -> jax.Array:
    """Seed 004's spatial loss, kept to reproduce its runs (not for new work).

    With `d` the distance between predicted and true point and `tau = threshold`::

        loss = d**2               if d <  tau
               tau * d + tau**2   if d >= tau

    At `d = tau` the value jumps from `tau**2` to `2 tau**2` and the slope drops from
    `2 tau` to `tau`: an error just outside the threshold costs twice one just
    inside and pulls half as hard. `jaxguard.losses.distance_hinge` is the continuous
    form. The seed measured `d` as the L1 distance (`norm="l1"`).

    Args:
      pred: `[batch, 2]` predicted `(x, y)`, normalised.
      target: `[batch, 2]` true `(x, y)`, same units.
      threshold: `tau`, `> 0`, normalised units.
      norm: "l1" (the seed's) or "l2".

    Returns:
      `[batch]` per-example values; the caller reduces.
    """
    squared, distance, far = split_distance(
        "seed_discontinuous_hinge", pred, target, threshold, norm, inclusive=True
    )
    return jnp.where(far, threshold * distance + threshold**2, squared)


_SPATIAL_LOSSES = {"hinge": losses.distance_hinge, "seed_hinge": seed_discontinuous_hinge}


def _image_size(config: ConfigDict) -> tuple[int, int]:
    """`(height, width)` of the task's images."""
    if config.data.source:
        return data_lib.source_image_size(config.data.source)
    return config.data.image_size, config.data.image_size


def _threshold(config: ConfigDict) -> tuple[float, float]:
    """`loss.threshold` as (normalised, pixels)."""
    try:
        return coords.threshold_in_both_units(
            config.loss.threshold, config.loss.threshold_units, _image_size(config)
        )
    except ValueError as error:
        raise config_lib.ConfigError(f"loss.threshold / loss.threshold_units: {error}") from None


def _pos_weight(config: ConfigDict, splits) -> tuple[float, str]:
    """The done term's `pos_weight` and where it came from."""
    setting = config.loss.pos_weight.strip().lower()
    if setting == "auto":
        rate = float(np.mean(splits["train"]["done"]))
        if not 0.0 < rate < 1.0:
            raise config_lib.ConfigError(
                f"loss.pos_weight=auto needs done and not-done training examples; the training "
                f"split's done rate is {rate:.3g} (set data.done_fraction or a number)"
            )
        origin = f"auto: (1 - rate) / rate at train rate {rate:.2%}"
        return losses.pos_weight_from_rate(rate), origin
    try:
        value = float(setting)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise config_lib.ConfigError(
            f"loss.pos_weight must be 'auto' or a number > 0, got {config.loss.pos_weight!r}"
        )
    return value, "set in loss.pos_weight"


def make_loss(config: ConfigDict, splits, steps_per_epoch: int) -> losses.CompositeLoss:
    del steps_per_epoch  # No schedules in this task's loss.
    cfg = config.loss
    if cfg.spatial not in _SPATIAL_CHOICES:
        raise config_lib.ConfigError(
            f"loss.spatial must be one of {', '.join(_SPATIAL_CHOICES)}, got {cfg.spatial!r}"
        )
    if cfg.norm not in _NORMS:
        raise config_lib.ConfigError(
            f"loss.norm must be one of {', '.join(_NORMS)}, got {cfg.norm!r}"
        )
    if cfg.done_weight < 0:
        raise config_lib.ConfigError(f"loss.done_weight must be >= 0, got {cfg.done_weight}")
    threshold, _ = _threshold(config)
    pos_weight, _ = _pos_weight(config, splits)
    spatial = functools.partial(_SPATIAL_LOSSES[cfg.spatial], threshold=threshold, norm=cfg.norm)
    done = functools.partial(losses.weighted_sigmoid_binary_cross_entropy, pos_weight=pos_weight)
    return losses.compose(
        spatial=losses.Term(spatial, inputs=("pred_xy", "target_xy"), example_weights="pointing"),
        done=losses.Term(done, inputs=("done_logit", "done"), weight=cfg.done_weight),
    )


# ----------------------------------------------------------------------------- data and model


def make_splits(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    d = config.data
    if d.source:
        return data_lib.load_folder(
            d.source,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            done_fraction=d.done_fraction,
            examples_per_image=d.examples_per_image,
            seed=config.seed,
        )
    return data_lib.generate(
        num_train=d.num_train,
        num_val=d.num_val,
        num_test=d.num_test,
        image_size=d.image_size,
        objects_min=d.objects_min,
        objects_max=d.objects_max,
        object_radius=d.object_radius,
        noise=d.noise,
        done_fraction=d.done_fraction,
        examples_per_image=d.examples_per_image,
        seed=config.seed,
    )


def make_model(config: ConfigDict, splits, rngs: nnx.Rngs) -> PointerNet:
    del splits  # The architecture does not depend on the data.
    m = config.model
    return PointerNet(
        work_size=m.work_size,
        features=m.features,
        dilations=tuple(m.dilations),
        mark_sigma=m.mark_sigma,
        attention_scale=m.attention_scale,
        head_init_std=m.head_init_std,
        rngs=rngs,
    )


def forward(model: PointerNet, batch) -> dict[str, jax.Array]:
    outputs = model(batch["image"], batch["objects"], batch["num_marked"])
    return {**outputs, "done_prob": jax.nn.sigmoid(outputs["done_logit"])}


def loss_inputs(outputs, batch) -> dict[str, jax.Array]:
    done = batch["done"]
    # Distances in units of the longer image side (the threshold's units), see coords.
    scale = jnp.asarray(coords.distance_scale(batch["image"].shape[1:3]), jnp.float32)
    # Final steps have no next object (NaN target) and weight 0; a finite stand-in keeps
    # 0 * NaN out of the weighted mean.
    target = jnp.where(done[:, None] > 0.5, 0.0, batch["target_xy"])
    return {
        "pred_xy": outputs["xy"] * scale,
        "target_xy": target * scale,
        "done_logit": outputs["done_logit"],
        "done": done,
        "pointing": 1.0 - done,
    }


# ----------------------------------------------------------------------------- metrics


@struct.dataclass
class PointerMetrics:
    """`PointingMetrics` plus the highest done probability given to a done example.

    `compute()` adds `done_prob_max_positive` (NaN when no example was done) to the
    `PointingMetrics` keys: at or below 0.5, done was never predicted where it was true.
    """

    pointing: PointingMetrics
    max_done_prob_positive: jax.Array

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> PointerMetrics:
        # Half-pixel bins over [0, diagonal]: error quantiles accurate to 0.5 px at any size.
        bins = math.ceil(2 * math.hypot(*image_size))
        return cls(
            pointing=PointingMetrics.empty(image_size, bins=bins),
            max_done_prob_positive=jnp.full((), -jnp.inf, jnp.float32),
        )

    def update(self, pred_xy, target_xy, done_prob, done_true) -> PointerMetrics:
        positive = (done_true >= 0.5) & jnp.isfinite(done_prob)
        # -inf stands in for "no done example yet" and loses every max.
        batch_max = jnp.max(jnp.where(positive, done_prob, -jnp.inf))
        return self.replace(
            pointing=self.pointing.update(pred_xy, target_xy, done_prob, done_true),
            max_done_prob_positive=jnp.maximum(self.max_done_prob_positive, batch_max),
        )

    def compute(self) -> dict[str, float]:
        highest = float(jax.device_get(self.max_done_prob_positive))
        return {
            **self.pointing.compute(),
            "done_prob_max_positive": highest if math.isfinite(highest) else math.nan,
        }


def empty_metrics(config: ConfigDict) -> PointerMetrics:
    return PointerMetrics.empty(_image_size(config))


def update_metrics(metrics: PointerMetrics, outputs, batch) -> PointerMetrics:
    return metrics.update(outputs["xy"], batch["target_xy"], outputs["done_prob"], batch["done"])


def head(model: PointerNet) -> nnx.Module:
    return model.done_head


def _pixel_errors(outputs, batch) -> np.ndarray:
    """`[N]` pixel error of every example, NaN for final steps."""
    return coords.pixel_error(outputs["xy"], batch["target_xy"], batch["image"].shape[1:3])


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    done = np.asarray(batch["done"]) >= 0.5
    prob = np.asarray(outputs["done_prob"])
    return {
        "done_prob/done": prob[done],
        "done_prob/not_done": prob[~done],
        "pixel_error": _pixel_errors(outputs, batch)[~done],
        "pred_x": np.asarray(outputs["xy"])[:, 0],
        "pred_y": np.asarray(outputs["xy"])[:, 1],
    }


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    xy, target = np.asarray(outputs["xy"]), np.asarray(batch["target_xy"])
    return {
        "image_id": batch["image_id"],
        "num_objects": batch["num_objects"],
        "num_marked": batch["num_marked"],
        "done_true": batch["done"],
        "done_prob": outputs["done_prob"],
        "true_x": target[:, 0],
        "true_y": target[:, 1],
        "pred_x": xy[:, 0],
        "pred_y": xy[:, 1],
        "pixel_error": _pixel_errors(outputs, batch),
    }


def images(outputs, batch) -> dict[str, np.ndarray]:
    """The first `NUM_IMAGES` validation examples, drawn by `render.render_example`."""
    count = min(NUM_IMAGES, len(batch["done"]))
    return {
        f"val_examples/{i}": render.render_example(
            batch["image"][i],
            batch["objects"][i],
            int(batch["num_marked"][i]),
            batch["target_xy"][i],
            np.asarray(outputs["xy"][i]),
            float(batch["done"][i]),
            float(outputs["done_prob"][i]),
        )
        for i in range(count)
    }


# ----------------------------------------------------------------------------- reports


def _done_counts(split) -> tuple[int, int]:
    done = np.asarray(split["done"]) >= 0.5
    return int(done.sum()), int(done.size)


def startup_lines(config: ConfigDict, splits) -> list[str]:
    height, width = splits["train"]["image"].shape[1:3]
    threshold, pixels = _threshold(config)
    pos_weight, origin = _pos_weight(config, splits)
    counts = splits["train"]["num_objects"]
    rates = []
    for name in data_lib.SPLITS:
        positives, total = _done_counts(splits[name])
        rates.append(f"{name} {positives / total:.1%} ({positives} of {total})")
    lines = [
        f"images {width} x {height} px (model works at {config.model.work_size} x "
        f"{config.model.work_size}); objects per training image: mean {counts.mean():.1f}, "
        f"range {counts.min()}-{counts.max()}",
        f"distance threshold {threshold:.4g} normalised (of the longer side) = {pixels:.1f} px "
        f"on {width} x {height} images; {config.loss.norm.upper()} distance, "
        f"{config.loss.spatial} loss",
        f"done rate: {', '.join(rates)}; pos_weight {pos_weight:.3g} ({origin}), done_weight "
        f"{config.loss.done_weight:g}",
        f"first-epoch head gradient band {tuple(config.model.head_grad_band)} "
        f"(heads {', '.join(HEADS)})",
    ]
    if _done_counts(splits["val"])[0] == 0:
        lines.append(
            "warning: the validation split has no done examples, so done recall and the "
            "done_never_predicted guard cannot see the done head"
        )
    return lines


def report_lines(config: ConfigDict, splits, summary: Mapping) -> list[str]:
    test = summary["test"]
    positives, total = _done_counts(splits["test"])
    height, width = splits["test"]["image"].shape[1:3]
    stopped = summary["stopped_by"]
    source = config.data.source or "embedded generator"
    return [
        f"pointer, data {source} (seed {config.seed}), workdir {summary['workdir']}",
        f"test split: {total} examples on {width} x {height} images, {positives} done",
        f"pixel error on {test['pixel_error_count']:.0f} pointing steps: mean "
        f"{test['pixel_error_mean']:.2f}, median {test['pixel_error_median']:.2f}, p90 "
        f"{test['pixel_error_p90']:.2f} px",
        f"done precision {test['done_precision']:.3f}  recall {test['done_recall']:.3f}  "
        f"F1 {test['done_f1']:.3f}",
        f"done probability mean {test['done_prob_mean']:.3f}, std {test['done_prob_std']:.3f}, "
        f"highest on a done example {test['done_prob_max_positive']:.3f}",
        f"loss: {config.loss.spatial} ({config.loss.norm}) threshold {config.loss.threshold:g} "
        f"{config.loss.threshold_units}, done_weight {config.loss.done_weight:g}, pos_weight "
        f"{config.loss.pos_weight}",
        f"best epoch {summary['best_epoch']} of {summary['epochs_run']} run, "
        f"{summary['train_seconds']:.0f} s of training",
        "stopped by: " + (stopped["message"] if stopped else "the epoch budget"),
    ]


def audit(config: ConfigDict, splits) -> dict[str, Any]:
    """Done balance of every split and the `pos_weight` that balances it (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`; figures are `examples`,
      `images`, `done`, `not_done`, `done_rate`, `objects_per_example` and
      `balancing_pos_weight` (`(1 - rate) / rate`, NaN without both classes).
    """
    result: dict[str, Any] = {}
    for name, split in splits.items():
        positives, total = _done_counts(split)
        rate = positives / total
        result[name] = {
            "examples": total,
            "images": len(np.unique(split["image_id"])),
            "done": positives,
            "not_done": total - positives,
            "done_rate": rate,
            "objects_per_example": float(np.mean(split["num_objects"])),
            "balancing_pos_weight": losses.pos_weight_from_rate(rate)
            if 0 < positives < total
            else math.nan,
        }
    advice = []
    train = result["train"]
    if 0 < train["done"] < train["examples"]:
        advice.append(
            f"train: {train['done_rate']:.1%} done; a model that never says done is "
            f"{1 - train['done_rate']:.1%} accurate on it. Weight done examples by "
            f"pos_weight = (1 - rate) / rate = {train['balancing_pos_weight']:.3g} "
            "(loss.pos_weight=auto does this)"
        )
    else:
        advice.append(
            f"train has {train['done']} done examples of {train['examples']}: the done head "
            "cannot be balanced; change data.done_fraction"
        )
    setting = config.loss.pos_weight.strip().lower()
    if setting != "auto" and math.isfinite(train["balancing_pos_weight"]):
        advice.append(
            f"loss.pos_weight={config.loss.pos_weight} weights a done example "
            f"{float(setting) / train['balancing_pos_weight']:.2g}x as much as balance needs"
        )
    for name in data_lib.SPLITS[1:]:
        figures = result[name]
        if figures["done"] == 0:
            advice.append(f"{name} has no done examples: done recall and F1 are undefined on it")
        elif figures["done"] < 20:
            advice.append(
                f"{name} has {figures['done']} done examples: done recall moves in steps of "
                f"{1 / figures['done']:.0%}; more examples (data.num_{name}) or a higher "
                "data.done_fraction give steadier figures"
            )
    result["recommendations"] = advice
    return result


# ----------------------------------------------------------------------------- guards


class HeadGradientBand:
    """Checks the first epoch's gradient norm of each head against a healthy band.

    `update_step` (every logging step of epoch 0) reads `grad_norm/<head>` from the
    train-step measurements and warns the first time a head leaves `[low, high]`;
    `update` after the first evaluation reports each head's median and range over the
    epoch ("info" when every measurement was inside the band, else "warn"). The band is
    model-specific: the seed's 50-200 was for its own network; measure a healthy run
    of yours and set `model.head_grad_band` around it.
    """

    def __init__(self, heads: tuple[str, ...], band: tuple[float, float]):
        low, high = (float(v) for v in band)
        if not 0 <= low < high:
            raise config_lib.ConfigError(
                f"model.head_grad_band must be (low, high) with 0 <= low < high, got {band}"
            )
        self.heads, self.low, self.high = heads, low, high
        self._norms: dict[str, list[float]] = {h: [] for h in heads}
        self._warned: list[str] = []
        self._reported = False

    def _inside(self, value: float) -> bool:
        return self.low <= value <= self.high

    def update_step(self, step: int, epoch: int, scalars: Mapping[str, float]) -> GuardEvent | None:
        if epoch > 0:
            return None
        outside = []
        for name in self.heads:
            value = float(scalars[f"grad_norm/{name}"])
            self._norms[name].append(value)
            if not self._inside(value) and name not in self._warned:
                self._warned.append(name)
                outside.append(f"{name} {value:.3g}")
        if not outside:
            return None
        return GuardEvent(
            "head_gradients",
            "warn",
            f"step {step}: head gradient norm outside the healthy band [{self.low:g}, "
            f"{self.high:g}]: {', '.join(outside)} (far below: the head barely learns; far "
            "above: the loss or the learning rate is too large)",
            step=step,
        )

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        del metrics  # This guard reads the train steps only.
        if epoch > 0 or self._reported or not self._norms[self.heads[0]]:
            return None
        self._reported = True
        parts, outside, measured = [], 0, 0
        for name in self.heads:
            values = self._norms[name]
            measured += len(values)
            outside += sum(not self._inside(v) for v in values)
            parts.append(
                f"{name} median {statistics.median(values):.3g} "
                f"({min(values):.3g}-{max(values):.3g})"
            )
        verdict = "all inside" if outside == 0 else f"{outside} of {measured} outside"
        return GuardEvent(
            "head_gradients",
            "info" if outside == 0 else "warn",
            f"epoch 0 head gradient norms: {'; '.join(parts)}; band [{self.low:g}, "
            f"{self.high:g}]: {verdict}",
            epoch=epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"norms": self._norms, "warned": self._warned, "reported": self._reported}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._norms = {name: list(values) for name, values in state["norms"].items()}
        self._warned = list(state["warned"])
        self._reported = state["reported"]


class DoneNeverPredicted:
    """Warns when no done validation example gets a done probability above 0.5.

    After each evaluation: if the validation split has done examples and the highest
    done probability among them (`done_prob_max_positive`) is at most 0.5, the streak
    grows, else it restarts. From `patience` evaluations in a row on, every evaluation
    warns with the figures (the seed's model sat at done probabilities of 0.00-0.57
    for a whole run). Evaluations without done examples leave the streak unchanged.
    """

    def __init__(self, patience: int):
        if patience < 1:
            raise config_lib.ConfigError(f"model.done_guard_patience must be >= 1, got {patience}")
        self.patience = patience
        self._streak = 0

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        highest = metrics["done_prob_max_positive"]
        if math.isnan(highest):
            return None
        self._streak = self._streak + 1 if highest <= DONE_THRESHOLD else 0
        if self._streak < self.patience:
            return None
        positives = round(metrics["done_true_rate"] * metrics["count"])
        return GuardEvent(
            "done_never_predicted",
            "warn",
            f"done never predicted: for {self._streak} evaluations in a row none of the "
            f"{positives} done validation examples got a done probability above "
            f"{DONE_THRESHOLD} (highest {highest:.3f}; all examples: mean "
            f"{metrics['done_prob_mean']:.3f}, std {metrics['done_prob_std']:.3f}); raise "
            "loss.pos_weight or loss.done_weight, or check the done labels",
            epoch=epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "streak": self._streak}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._streak = state["streak"]


def make_guards(config: ConfigDict, splits) -> dict[str, Any]:
    del splits  # The guards read metrics and train-step measurements only.
    return {
        "head_gradients": HeadGradientBand(HEADS, tuple(config.model.head_grad_band)),
        "done_never_predicted": DoneNeverPredicted(config.model.done_guard_patience),
    }
