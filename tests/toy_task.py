"""A toy task built through the public contract alone (docs/adding_a_task.md walks through it).

Data: `x [N, 4]` standard normal, `target = x @ (1, -2, 0.5, 0) + 0.1 noise`. Model: one
`nnx.Linear`. Loss: MSE. Metrics: `RegressionMetrics`. One guard: `GapGuard` warns when the
validation loss exceeds `guard.gap.ratio` times the training loss. Config:
tests/toy_config.py (`python -m jaxguard.train --cfg tests/toy_config.py` with tests/ on
PYTHONPATH; `config.task = "toy_task"` names this module).
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxguard import guards, losses
from jaxguard.config import ConfigError
from jaxguard.metrics import RegressionMetrics
from jaxguard.tasks.contract import Task

WEIGHTS = np.array([1.0, -2.0, 0.5, 0.0], np.float32)


def check_config(config) -> None:
    if "gap" in config.guard and config.guard.gap.ratio <= 0:
        raise ConfigError(f"guard.gap.ratio must be > 0, got {config.guard.gap.ratio!r}")


def make_splits(config):
    rng = np.random.default_rng(config.seed)
    splits = {}
    for name, size in (("train", 256), ("val", 64), ("test", 64)):
        x = rng.standard_normal((size, 4)).astype(np.float32)
        noise = 0.1 * rng.standard_normal(size).astype(np.float32)
        splits[name] = {"x": x, "target": x @ WEIGHTS + noise}
    return splits


class GapGuard(guards.Guard):
    """Warns when the validation loss is more than `ratio` times the training loss."""

    name = "gap"

    def __init__(self, ratio: float):
        self.ratio = ratio

    def check_metrics(self, available):
        guards.require_metrics(("loss", "train_loss"), available)

    def on_evaluation(self, evaluation):
        val, train = evaluation.metrics["loss"], evaluation.metrics["train_loss"]
        if val > self.ratio * train:
            return guards.GuardEvent(
                self.name,
                "warn",
                f"val loss {val:.4g} > {self.ratio:g} x train loss {train:.4g}",
                evaluation.epoch,
            )
        return None


TASK = Task(
    name="toy_task",
    epoch_line=(("R²", "r2"),),
    diagnostic_keys=("r2",),
    guard_names=("gap",),
    check_config=check_config,
    make_splits=make_splits,
    make_model=lambda config, splits, rngs: nnx.Linear(4, 1, rngs=rngs),
    make_loss=lambda config, splits, steps: losses.compose(
        mse=losses.Term(lambda p, t: (p - t) ** 2)
    ),
    forward=lambda model, batch: {"pred": model(batch["x"])[:, 0]},
    loss_inputs=lambda outputs, batch: {"pred": outputs["pred"], "target": batch["target"]},
    empty_metrics=lambda config: RegressionMetrics.empty(),
    update_metrics=lambda metrics, outputs, batch: metrics.update(outputs["pred"], batch["target"]),
    head=lambda model: model,
    histograms=lambda outputs, batch: {"predictions": np.asarray(outputs["pred"])},
    prediction_table=lambda outputs, batch: {
        "true": batch["target"],
        "predicted": outputs["pred"],
    },
    report_lines=lambda config, splits, summary: [f"toy R² {summary.test['r2']:.4f}"],
    audit=lambda config, splits: {
        "train": {"target_std": float(jnp.std(splits["train"]["target"]))},
        "recommendations": [],
    },
    make_guards=lambda config, splits: (
        [GapGuard(config.guard.gap.ratio)] if "gap" in config.guard else []
    ),
)
