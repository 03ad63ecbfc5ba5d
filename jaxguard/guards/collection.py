"""`GuardCollection`: the run's guards, called in one fixed order, with one saved state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxguard.guards.base import Evaluation, Guard, GuardEvent, StepInfo
from jaxguard.guards.collapse import CollapseGuard
from jaxguard.guards.early_stopping import EarlyStopping
from jaxguard.guards.ensemble import EnsembleSpreadGuard
from jaxguard.guards.nonfinite import NonFiniteGuard


class GuardCollection:
    """The guards of a run, dispatched in the order given.

    `from_config` fixes that order: the non-finite guard, the collapse guard, the ensemble-spread
    guard, the task's guards
    in the order the task lists them, early stopping last (so its stop message comes after the
    figures other guards report for the same evaluation). Every hook runs for every guard, even
    after one of them asked to stop, so each guard's state stays in step with the run.
    """

    def __init__(self, guards: Sequence[Guard]):
        guards = tuple(guards)  # A generator would be used up by the checks below.
        names = []
        for guard in guards:
            if not isinstance(guard, Guard):
                raise TypeError(
                    f"GuardCollection: {guard!r} is not a jaxguard.guards.Guard; subclass it"
                )
            if not guard.name:
                raise ValueError(f"GuardCollection: {type(guard).__name__} has no `name`")
            if guard.name in names:
                raise ValueError(f"GuardCollection: two guards are named {guard.name!r}")
            names.append(guard.name)
        self.guards = guards

    @classmethod
    def from_config(cls, guard_config: Any, task_guards: Iterable[Guard] = ()) -> GuardCollection:
        """The built-in guards `config.guard` enables, around the task's own."""
        stop, collapse = guard_config.early_stopping, guard_config.collapse
        ordered: list[Guard] = [NonFiniteGuard.from_config(guard_config.nonfinite)]
        if collapse.enabled:
            ordered.append(CollapseGuard.from_config(collapse))
        if guard_config.ensemble_spread.enabled:
            ordered.append(EnsembleSpreadGuard.from_config(guard_config.ensemble_spread))
        ordered.extend(task_guards)
        if stop.enabled:
            ordered.append(EarlyStopping.from_config(stop))
        return cls(ordered)

    def __getitem__(self, name: str) -> Guard:
        for guard in self.guards:
            if guard.name == name:
                return guard
        raise KeyError(f"no guard named {name!r}; guards: {', '.join(self.names)}")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(guard.name for guard in self.guards)

    def check_metrics(self, available: Iterable[str]) -> None:
        """Fails with `guard.<name>: ...` when a guard reads a metric the task does not compute."""
        available = set(available)
        for guard in self.guards:
            try:
                guard.check_metrics(available)
            except ValueError as error:
                raise ValueError(f"guard.{guard.name}: {error}") from None

    def on_step(self, info: StepInfo) -> list[GuardEvent]:
        """Every guard's `on_step`, in order; the events they returned."""
        return [event for guard in self.guards if (event := guard.on_step(info)) is not None]

    def on_evaluation(self, evaluation: Evaluation) -> list[GuardEvent]:
        """Every guard's `on_evaluation`, in order; the events they returned."""
        return [
            event for guard in self.guards if (event := guard.on_evaluation(evaluation)) is not None
        ]

    def state_dict(self) -> dict[str, dict]:
        return {guard.name: guard.state_dict() for guard in self.guards}

    def load_state_dict(self, saved: Mapping[str, Mapping]) -> None:
        """Restores each guard's state; a guard of this run missing from `saved` is an error."""
        missing = [name for name in self.names if name not in saved]
        if missing:
            raise ValueError(
                f"the checkpoint holds no state for guard {', '.join(missing)}; it was saved by "
                "a run with other guards"
            )
        for guard in self.guards:
            guard.load_state_dict(saved[guard.name])
