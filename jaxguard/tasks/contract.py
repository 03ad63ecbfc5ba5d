"""The contract between the harness and a task: one `Task` object per task package.

A task package (`jaxguard/tasks/<name>/`) builds one `Task` from its own modules and exports it
as `TASK` in its `__init__.py`; the registry in `jaxguard.tasks` maps a `config.task` name to
that package. `Task` is a frozen dataclass with keyword-only fields, so a missing hook or a
misspelt one fails when the package is imported, naming the hook; `__post_init__` checks that
every hook is callable. The harness calls nothing else of a task.

Shapes: a split is `{name: np.ndarray [N, ...]}` with the same N for every array; a batch is
the same with N the batch size (NumPy when given to a task's host hooks, JAX arrays inside
jit). `outputs` is what `forward` returns for a batch, `{name: [B, ...]}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxguard.guards import GuardEvent

Split = Mapping[str, np.ndarray]
Splits = Mapping[str, Split]  # "train", "val" and "test".


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What the harness hands to `Task.report_lines` (and writes to `test_metrics.json`).

    Attributes:
      workdir: The run directory.
      task: The registry name of the task.
      stopped_by: The guard event that ended the run, or None when the epoch budget did.
      best_epoch: The epoch whose weights were tested (the best checkpoint's, else the last).
      best_monitor: The monitor that chose the best checkpoint, or None without one.
      epochs_run: Epochs trained, resumed ones included.
      steps_per_epoch: Train steps in one epoch.
      train_seconds: Wall time of the training loop in this process (a resumed run counts
        only its own part).
      param_count: Number of trainable parameters.
      pretrain: What `Task.pretrain` returned, or None.
      test: Test-split metrics of the tested weights, by unprefixed name: floats, and lists of
        floats for array metrics (a rank histogram).
      history: One record per epoch: `epoch`, `train_loss` and `val_<metric>` floats.
    """

    workdir: str
    task: str
    stopped_by: GuardEvent | None
    best_epoch: int
    best_monitor: str | None
    epochs_run: int
    steps_per_epoch: int
    train_seconds: float
    param_count: int
    pretrain: dict | None
    test: dict[str, float | list[float]]
    history: tuple[dict[str, float], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the event as a dict; the history left out (it is in log.csv)."""
        summary = dataclasses.asdict(self)
        del summary["history"]
        return summary


def _callable_fields() -> tuple[tuple[str, bool], ...]:
    """(hook name, required) of every callable field of `Task`, in declaration order."""
    return tuple(
        (field.name, field.default is dataclasses.MISSING)
        for field in dataclasses.fields(Task)
        if field.name not in _DATA_FIELDS
    )


_DATA_FIELDS = ("name", "epoch_line", "diagnostic_keys", "guard_names")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """Everything the harness needs from a task. Hooks marked optional may be None.

    Attributes:
      name: The registry name (`config.task`).
      epoch_line: `((label, validation metric key), ...)` shown on each epoch's console line.
      diagnostic_keys: Metric keys logged as `diag/<key>` for a fixed validation batch every
        `log.diagnostics_every_steps`.
      guard_names: The sections the task's config may add under `guard` (its own guards'
        settings, `guard.<name>.*`); the config loader rejects any other new section there.
      check_config: `(config) -> None`; raises `jaxguard.config.ConfigError` naming the first
        bad task key. Run by `load_config`, before anything is built.
      make_splits: `(config) -> Splits`: the data, `{"train"|"val"|"test": Split}`.
      make_model: `(config, splits, rngs: nnx.Rngs) -> nnx.Module`.
      make_loss: `(config, splits, steps_per_epoch) -> jaxguard.losses.CompositeLoss`.
      forward: `(model, batch) -> outputs`, jittable; the model is in train or eval mode.
      loss_inputs: `(outputs, batch) -> {name: array}`: the arrays the loss terms read.
      empty_metrics: `(config) -> metrics`: a `jaxguard.metrics`-style state (`compute()`).
      update_metrics: `(metrics, outputs, batch) -> metrics`, jittable.
      head: `(model) -> nnx.Module`: the output layer (its weight norm is logged).
      histograms: `(outputs, batch) -> {name: array}` for TensorBoard.
      prediction_table: `(outputs, batch) -> {column: [N]}`: the rows of predictions.csv.
      report_lines: `(config, splits, summary: RunSummary) -> [str]`: the task's lines of
        report.txt; the harness adds the shared ones (best epoch, stop reason, timings).
      audit: `(config, splits) -> {split: figures, ..., "recommendations": [str]}`, for
        `python -m jaxguard.audit`.
      make_guards: optional, `(config, splits) -> [Guard]`: the task's guards, each named
        after its section in `guard_names`.
      startup_lines: optional, `(config, splits) -> [str]` printed before training.
      pretrain: optional, `(config, model, splits, log) -> dict | None`: runs before training
        (not on resume); `log(line)` prints.
      images: optional, `(outputs, batch) -> {name: [H, W, C] uint8}` (C in 1, 3, 4), logged to
        TensorBoard after each evaluation with the validation outputs; `jaxguard.figures.to_rgb`
        turns a figure into one.
      figures: optional, `(config, splits, summary: RunSummary, outputs, batch) ->
        {name: matplotlib Figure}` with the test split's outputs of the tested weights: written
        as `figures/<name>.png` in the run directory and as TensorBoard images `figures/<name>`
        beside the learning curves every run gets (`jaxguard.figures`).
      collapse_arrays: optional, `(outputs, batch) -> (pred, target)` for the collapse dump.
      export: optional, `(config, workdir, predict, splits) -> [str]`: writes extra files
        from the tested weights (`predict(batch) -> outputs`); the lines go to the report.
    """

    name: str
    epoch_line: tuple[tuple[str, str], ...]
    diagnostic_keys: tuple[str, ...]
    guard_names: tuple[str, ...] = ()
    check_config: Callable
    make_splits: Callable
    make_model: Callable
    make_loss: Callable
    forward: Callable
    loss_inputs: Callable
    empty_metrics: Callable
    update_metrics: Callable
    head: Callable
    histograms: Callable
    prediction_table: Callable
    report_lines: Callable
    audit: Callable
    make_guards: Callable | None = None
    startup_lines: Callable | None = None
    pretrain: Callable | None = None
    images: Callable | None = None
    figures: Callable | None = None
    collapse_arrays: Callable | None = None
    export: Callable | None = None

    def __post_init__(self):
        owner = f"Task {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Task: `name` must be a non-empty string, got {self.name!r}")
        for field in ("epoch_line", "diagnostic_keys", "guard_names"):
            _check_strings(owner, field, getattr(self, field))
        for name, required in _callable_fields():
            hook = getattr(self, name)
            if hook is None and not required:
                continue
            if not callable(hook):
                raise TypeError(f"{owner}: hook `{name}` must be callable, got {hook!r}")

    def guards(self, config: Any, splits: Splits) -> list:
        """The task's guards for a run (none without `make_guards`)."""
        return [] if self.make_guards is None else list(self.make_guards(config, splits))


def _check_strings(owner: str, field: str, value: Sequence) -> None:
    """`epoch_line` holds (label, key) string pairs; the other data fields hold strings."""
    items = value if isinstance(value, tuple) else None
    if items is None:
        raise TypeError(f"{owner}: `{field}` must be a tuple, got {type(value).__name__}")
    for item in items:
        parts = item if field == "epoch_line" else (item,)
        if field == "epoch_line" and (not isinstance(item, tuple) or len(item) != 2):
            raise TypeError(f"{owner}: `epoch_line` entries are (label, key) pairs, got {item!r}")
        if not all(isinstance(part, str) and part for part in parts):
            raise TypeError(f"{owner}: `{field}` holds {item!r}; expected non-empty strings")
