"""`GuardCollection`: the run's guards, called in one fixed order, with one saved state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxguard.guards.base import Diagnostics, Evaluation, Guard, GuardEvent, StepInfo
from jaxguard.guards.collapse import CollapseGuard
from jaxguard.guards.disagreement import DisagreementGuard
from jaxguard.guards.early_stopping import EarlyStopping
from jaxguard.guards.ensemble import EnsembleSpreadGuard
from jaxguard.guards.loss_terms import LossTermGuard
from jaxguard.guards.nonfinite import NonFiniteGuard
from jaxguard.guards.overfitting import OverfittingGuard
from jaxguard.guards.volatility import VolatilityGuard
from jaxguard.guards.warmup import WarmupGuard, weight_ramps
from jaxguard.guards.watched import parse_watched


class GuardCollection:
    """The guards of a run, dispatched in the order given.

    `from_config` fixes that order: the non-finite guard, the loss-term guard, the collapse
    guard, the ensemble-spread guard, the task's guards in the order the task lists them, the
    volatility, disagreement and overfitting guards, early stopping (so its stop message comes
    after the figures other guards report for the same evaluation) and the warm-up guard last
    (it reads the best epoch early stopping has just updated). Every hook runs for every guard, even
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
    def from_config(
        cls,
        guard_config: Any,
        task_guards: Iterable[Guard] = (),
        *,
        loss_weights: Mapping[str, Any] | None = None,
        steps_per_epoch: int = 1,
        last_epoch: int = 0,
    ) -> GuardCollection:
        """The built-in guards `config.guard` enables, around the task's own.

        Args:
          guard_config: `config.guard`.
          task_guards: The task's guards, in the task's order.
          loss_weights: Term name -> weight (a float or an optax schedule) of the composite loss
            (`{name: term.weight for name, term in loss.terms.items()}`), for `guard.loss_terms`
            and `guard.warmup`; None leaves both out.
          steps_per_epoch: Train steps per epoch, to turn warm-up steps into epochs.
          last_epoch: The last epoch of the run's budget (`train.epochs - 1`).
        """
        ordered: list[Guard] = [NonFiniteGuard.from_config(guard_config.nonfinite)]
        terms = guard_config.loss_terms
        if terms.enabled and loss_weights is not None:
            ordered.append(
                LossTermGuard(
                    loss_weights,
                    weight_tolerance=terms.weight_tolerance,
                    min_share=dict(terms.min_share),
                    patience=terms.patience,
                )
            )
        if guard_config.collapse.enabled:
            ordered.append(CollapseGuard.from_config(guard_config.collapse))
        if guard_config.ensemble_spread.enabled:
            ordered.append(EnsembleSpreadGuard.from_config(guard_config.ensemble_spread))
        ordered.extend(task_guards)
        ordered.extend(_comparison_guards(guard_config))
        stop = guard_config.early_stopping
        if stop.enabled:
            early_stopping = EarlyStopping.from_config(stop)
            ordered.append(early_stopping)
            ramps = weight_ramps(loss_weights or {}, steps_per_epoch)
            if guard_config.warmup.enabled and ramps:
                ordered.append(WarmupGuard(ramps, early_stopping, last_epoch))
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
        # Early stopping first: other guards read its monitor, and a bad monitor is its key.
        for guard in sorted(self.guards, key=lambda guard: guard.name != "early_stopping"):
            try:
                guard.check_metrics(available)
            except ValueError as error:
                raise ValueError(f"guard.{guard.name}: {error}") from None

    def on_step(self, info: StepInfo) -> list[GuardEvent]:
        """Every guard's `on_step`, in order; the events they returned."""
        return [event for guard in self.guards if (event := guard.on_step(info)) is not None]

    def on_diagnostics(self, diagnostics: Diagnostics) -> list[GuardEvent]:
        """Every guard's `on_diagnostics`, in order; the events they returned."""
        return [
            event
            for guard in self.guards
            if (event := guard.on_diagnostics(diagnostics)) is not None
        ]

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


def _comparison_guards(guard_config: Any) -> list[Guard]:
    """Volatility, disagreement and overfitting, as `config.guard` enables them.

    Volatility and disagreement read the early-stopping monitor, so without early stopping the
    first watches only `guard.volatility.metrics` and the second is left out.
    """
    stop = guard_config.early_stopping
    found: list[Guard] = []
    volatility = guard_config.volatility
    if volatility.enabled:
        watched = parse_watched("guard.volatility", "metrics", volatility.metrics)
        if stop.enabled and stop.monitor not in dict(watched):
            watched = ((stop.monitor, stop.mode), *watched)
        start = volatility.start_epoch
        if start is None:
            start = max(2, stop.start_epoch if stop.enabled else 0)
        if watched:
            found.append(VolatilityGuard(watched, volatility.max_jump, start))
    disagreement = guard_config.disagreement
    quality = parse_watched("guard.disagreement", "quality", disagreement.quality)
    quality = tuple(pair for pair in quality if pair[0] != stop.monitor)
    if disagreement.enabled and stop.enabled and quality:
        found.append(
            DisagreementGuard(
                stop.monitor,
                stop.mode,
                quality,
                tolerance=disagreement.tolerance,
                patience=disagreement.patience,
                min_delta=stop.min_delta,
                start_epoch=disagreement.start_epoch,
            )
        )
    overfitting = guard_config.overfitting
    if overfitting.enabled:
        start = overfitting.start_epoch
        if start is None:
            start = max(1, stop.start_epoch if stop.enabled else 0)
        found.append(
            OverfittingGuard(
                overfitting.metric,
                overfitting.rise,
                overfitting.patience,
                start,
                overfitting.train_drop,
            )
        )
    return found
