"""Task definitions: data, model and loss for each jaxguard task.

A task is a module that `jaxguard.trainer` calls through these hooks:

Required:
  EPOCH_LINE: `((label, val metric key), ...)` shown in the per-epoch console line.
  DIAGNOSTIC_KEYS: metric keys logged for the fixed validation batch (`diag/...`).
  make_splits(config) -> {"train"|"val"|"test": {name: np.ndarray [N, ...]}}
  make_model(config, splits, rngs) -> nnx.Module
  make_loss(config, splits, steps_per_epoch) -> jaxguard.losses.CompositeLoss
  forward(model, batch) -> dict of model outputs (jittable)
  loss_inputs(outputs, batch) -> dict of the arrays the loss terms name
  empty_metrics(config) -> a jaxguard.metrics state; update_metrics(metrics, outputs, batch)
  head(model) -> the output layer (its weight norm is logged)
  histograms(outputs, batch) -> {name: array}; prediction_table(outputs, batch) -> {column: [N]}
  report_lines(config, splits, summary) -> lines of report.txt
Optional (the default does nothing):
  startup_lines(config, splits) -> lines printed before training (figures, warnings)
  make_guards(config, splits) -> {name: guard} beside the shared guards (see trainer._Guards)
  pretrain(config, model, splits, log) -> summary dict or None
  images(outputs, batch) -> {name: [H, W, 3] image} for TensorBoard, each epoch
  collapse_arrays(outputs, batch) -> (pred, target) for the collapse diagnostic dump
  export(config, workdir, predict, splits) -> lines; `predict(batch)` runs the best model

`TASKS` below is the registry of valid `config.task` names.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

TASKS = {
    "optical_depth": "jaxguard.tasks.optical_depth.task",
    "cvae": "jaxguard.tasks.cvae.task",
    "surface": "jaxguard.tasks.surface.task",
    "pointer": "jaxguard.tasks.pointer.task",
}


def get_task(name: str) -> ModuleType:
    """The task module registered as `name`; a one-line error lists the valid names."""
    if name not in TASKS:
        from jaxguard.config import ConfigError

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task: unknown task {name!r}{hint}; valid tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
