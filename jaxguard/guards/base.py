"""The guard protocol: what a guard is, what it reports, and the argument checks all guards share.

A guard watches a run and reports `GuardEvent`s: "stop" ends the run, "warn" and "info" are
logged. Every guard, built-in or a task's own, is a `Guard`: a `name` (also its config section,
`guard.<name>`), three hooks the harness calls the same way for every guard, and a JSON-able
state that goes into each checkpoint and comes back on `--resume`:

* `on_step(StepInfo)` at every logging step, with the train step's measurements;
* `on_diagnostics(Diagnostics)` on the diagnostics cadence inside an epoch (every
  `log.diagnostics_every_steps` steps), with figures from one validation batch and each loss
  term's share of the gradient;
* `on_evaluation(Evaluation)` after every evaluation, with the validation metrics;
* `state_dict()` / `load_state_dict(state)`.

Both hooks default to doing nothing, so a guard implements the ones it needs (Lightning's
`Callback` design). `GuardCollection` (jaxguard.guards.collection) calls them in a fixed order.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

LEVELS = ("info", "warn", "stop")


def format_figure(value: float) -> str:
    """Four significant figures: enough to compare values, short enough for one log line."""
    return f"{value:.4g}"


# Argument checks shared by every guard, the tasks' own guards included: each error names
# the guard (`owner`) and the argument.


def check_count(owner: str, name: str, value: Any, minimum: int) -> int:
    """`value` as an int (Python, NumPy or 0-d JAX integer); fails below `minimum`."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: `{name}` must be an integer, got {value!r}.")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: `{name}` must be an integer, got {value!r}.") from None
    if number < minimum:
        raise ValueError(f"{owner}: `{name}` must be >= {minimum}, got {number}.")
    return number


def check_advance(owner: str, name: str, value: Any, last: int | None, stopped: int | None) -> int:
    """The integer `value`, failing after a stop or unless it is later than the last update's."""
    number = check_count(owner, name, value, 0)
    if stopped is not None:
        raise RuntimeError(
            f"{owner}: the run was stopped at {name} {stopped}; update() called again at "
            f"{name} {number}."
        )
    if last is not None and number <= last:
        raise ValueError(
            f"{owner}: `{name}` must increase from update to update, got {number} after {last}."
        )
    return number


def require_metrics(needed: Iterable[str], available: Iterable[str]) -> None:
    """For `Guard.check_metrics`: fails in one line when a metric the guard reads is missing."""
    available = set(available)
    missing = [name for name in needed if name not in available]
    if missing:
        raise ValueError(
            f"reads metric {', '.join(missing)}, which the run does not compute; available: "
            f"{', '.join(sorted(available))}."
        )


def check_state_matches(owner: str, state: Mapping[str, Any], **settings: Any) -> None:
    """Fails when a saved state came from a guard with other settings (its values don't carry)."""
    for key, value in settings.items():
        if state[key] != value:
            raise ValueError(
                f"{owner}: the saved state has {key} {state[key]!r} but this guard has "
                f"{value!r}; its history does not carry over."
            )


@dataclasses.dataclass(frozen=True)
class GuardEvent:
    """What a guard reports: `level` "stop" ends the run, "warn" and "info" are logged.

    Attributes:
      guard: The `name` of the guard that reported it, e.g. "early_stopping".
      level: "info", "warn" or "stop".
      message: One line with the figures behind the event.
      epoch: The epoch of the evaluation that raised it (evaluation guards), else None.
      step: The training step it was raised at (the non-finite guard), else None.
    """

    guard: str
    level: str
    message: str
    epoch: int | None = None
    step: int | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"GuardEvent: `level` must be one of {LEVELS}, got {self.level!r}.")


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What `Guard.on_step` sees at a logging step.

    Attributes:
      step: The training step just taken (1 after the first update).
      epoch: The epoch it belongs to (0-based).
      scalars: The train step's measurements as floats: `loss`, `loss/<term>...`, `grad_norm`,
        `grad_norm/<module>`, `update_norm`, `lr`, `nonfinite/consecutive`, `nonfinite/total`.
    """

    step: int
    epoch: int
    scalars: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """What `Guard.on_diagnostics` sees on the diagnostics cadence, between evaluations.

    Attributes:
      step: The training step just taken.
      epoch: The epoch it belongs to (0-based).
      metrics: The task's metrics on one fixed validation batch by unprefixed name (`pred_std`,
        `std_ratio`, ...), plus, for every loss term `<t>`, `terms/<t>/value` (its raw value)
        and `terms/<t>/grad_share` (the norm of its weighted gradient over the sum of all terms'
        norms, on one fixed training batch).
    """

    step: int
    epoch: int
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What `Guard.on_evaluation` sees after an evaluation.

    Attributes:
      epoch: The epoch just evaluated (0-based).
      metrics: The validation metrics by unprefixed name (`loss`, `r2`, ...) plus `train_loss`,
        the mean of the epoch's logged training losses.
    """

    epoch: int
    metrics: Mapping[str, float]


class Guard:
    """Base of every guard: a name, three no-op hooks and an empty state.

    Subclasses set `name` (the config section `guard.<name>` their settings come from and the
    `GuardEvent.guard` of their events) and override what they need. A guard with state must
    override `state_dict` / `load_state_dict` so a resumed run continues exactly.
    """

    name: ClassVar[str] = ""

    def on_step(self, info: StepInfo) -> GuardEvent | None:
        """Called at every logging step; returns an event or None."""
        del info
        return None

    def on_diagnostics(self, diagnostics: Diagnostics) -> GuardEvent | None:
        """Called on the diagnostics cadence inside an epoch; returns an event or None."""
        del diagnostics
        return None

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        """Called after every evaluation; returns an event or None."""
        del evaluation
        return None

    def check_metrics(self, available: Iterable[str]) -> None:
        """Fails (ValueError, one line) when the guard reads a metric the task does not compute.

        Called once before training with the names of the validation metrics plus `train_loss`.
        """
        del available

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        del state


MODES = ("min", "max")


def check_mode(owner: str, name: str, mode: Any) -> str:
    """`mode` as "min" (lower is better) or "max" (higher is better); fails otherwise."""
    if mode not in MODES:
        raise ValueError(f"{owner}: `{name}` must be 'min' or 'max', got {mode!r}.")
    return mode


def worsening(value: float, reference: float, mode: str) -> float:
    """How much worse `value` is than `reference` in the metric's own direction.

    ``value - reference`` for mode "min", ``reference - value`` for mode "max": positive when
    `value` is worse, negative when it is better.
    """
    return value - reference if mode == "min" else reference - value
