"""Early stopping on a monitored validation value, and the warm-up check that goes with it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxguard._checks import check_positive
from jaxguard.guards.base import (
    Evaluation,
    Guard,
    GuardEvent,
    check_advance,
    check_count,
    check_mode,
    check_state_matches,
    format_figure,
)
from jaxguard.guards.monitor import MonitorExpression


def _check_optional_finite(owner: str, name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be finite or None, got {value}.")
    return float(value)


class EarlyStopping(Guard):
    """Stops a run when a monitored validation value stops improving, diverges or is NaN.

    Call `update(epoch, metrics)` after every evaluation. Rules, for an evaluation at
    ``epoch >= start_epoch``:

    * Improvement: ``value < best - min_delta`` (mode "min") or ``value > best + min_delta``
      (mode "max"). The delta is absolute, so it is right for metrics that are negative or change
      sign (a negative R^2, an ELBO). The first finite value is always an improvement; a NaN or
      infinite value never is.
    * Patience: the run stops at the `patience`-th evaluation in a row without an improvement.
    * ``check_finite``: a NaN or infinite value stops the run at once.
    * ``stopping_threshold``: the run stops (target reached) as soon as the value is at least
      that good (``<=`` in mode "min", ``>=`` in mode "max").
    * ``divergence_threshold``: the run stops as soon as the value is at least that bad (``>=``
      in mode "min", ``<=`` in mode "max").

    Evaluations before `start_epoch` are ignored: they record no best, count nothing towards
    patience and never stop the run (a NaN there gives a "warn" event when `check_finite`).
    Why not keep their best: a start epoch is set to skip a phase in which the monitor is not
    comparable with what follows, typically a KL warm-up, during which the loss is low because
    the KL term is nearly off (one post-mortem's best model came from epoch 5 with beta 0.017).
    A best kept from that phase is both the wrong checkpoint and a bar the later epochs cannot
    clear. So the best and its checkpoint only come from epochs >= start_epoch.

    Attributes:
      monitor: The compiled `MonitorExpression`; `monitor.validate(names)` checks it before a run.
    """

    name = "early_stopping"

    def __init__(
        self,
        monitor: str,
        mode: str,
        patience: int,
        min_delta: float = 0.0,
        start_epoch: int = 0,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
    ):
        owner = type(self).__name__
        self.monitor = MonitorExpression(monitor)
        self.mode = check_mode(owner, "mode", mode)
        self.patience = check_count(owner, "patience", patience, 1)
        check_positive(owner, "min_delta", min_delta, allow_zero=True)
        self.min_delta = float(min_delta)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self.stopping_threshold = _check_optional_finite(
            owner, "stopping_threshold", stopping_threshold
        )
        self.divergence_threshold = _check_optional_finite(
            owner, "divergence_threshold", divergence_threshold
        )
        if (
            self.stopping_threshold is not None
            and self.divergence_threshold is not None
            and self._at_least_as_good(self.divergence_threshold, self.stopping_threshold)
        ):
            raise ValueError(
                f"{owner}: in mode {mode!r} `stopping_threshold` ({self.stopping_threshold}) must "
                f"be better than `divergence_threshold` ({self.divergence_threshold})."
            )
        self.check_finite = bool(check_finite)
        self._best_value: float | None = None
        self._best_epoch: int | None = None
        self._wait = 0
        self._last_epoch: int | None = None
        self._is_improvement = False
        self._stopped_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> EarlyStopping:
        """From `config.guard.early_stopping`; the caller checks `cfg.enabled`."""
        return cls(
            monitor=cfg.monitor,
            mode=cfg.mode,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            start_epoch=cfg.start_epoch,
            stopping_threshold=cfg.stopping_threshold,
            divergence_threshold=cfg.divergence_threshold,
            check_finite=cfg.check_finite,
        )

    @property
    def best_value(self) -> float | None:
        """The best monitored value from epochs >= start_epoch; None before the first."""
        return self._best_value

    @property
    def best_epoch(self) -> int | None:
        return self._best_epoch

    @property
    def is_improvement(self) -> bool:
        """Whether the last update set a new best (the loop saves the best checkpoint then)."""
        return self._is_improvement

    @property
    def should_stop(self) -> bool:
        return self._stopped_epoch is not None

    @property
    def evaluations_without_improvement(self) -> int:
        """Counted evaluations since the last improvement (the patience used so far)."""
        return self._wait

    def _at_least_as_good(self, a: float, b: float) -> bool:
        return a <= b if self.mode == "min" else a >= b

    def _improves(self, value: float) -> bool:
        if self._best_value is None:
            return True
        if self.mode == "min":
            return value < self._best_value - self.min_delta
        return value > self._best_value + self.min_delta

    def _best_text(self) -> str:
        if self._best_value is None:
            return "no finite value yet"
        return f"best {format_figure(self._best_value)} (epoch {self._best_epoch})"

    def _stop(self, epoch: int, reason: str) -> GuardEvent:
        self._stopped_epoch = epoch
        return GuardEvent(
            "early_stopping", "stop", f"early stopping at epoch {epoch}: {reason}", epoch
        )

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Takes one evaluation's metrics; returns a "stop" event when the run should end.

        Args:
          epoch: The epoch of this evaluation; must increase from call to call.
          metrics: Validation metrics by unprefixed name, e.g. ``{"loss": 0.53, "r2": -0.2}``.

        Returns:
          A "stop" event (the run ends), a "warn" event (a NaN monitor before start_epoch), or
          None. `is_improvement` then says whether this evaluation set a new best.
        """
        epoch = check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, self._stopped_epoch
        )
        value = self.monitor.evaluate(metrics)
        self._last_epoch = epoch
        self._is_improvement = False
        name = self.monitor.source
        finite = math.isfinite(value)
        if epoch < self.start_epoch:
            if self.check_finite and not finite:
                return GuardEvent(
                    "early_stopping",
                    "warn",
                    f"{name} = {value} at epoch {epoch} is not finite; evaluations before "
                    f"start_epoch {self.start_epoch} do not stop the run",
                    epoch,
                )
            return None
        if not finite and self.check_finite:
            return self._stop(epoch, f"{name} = {value} is not finite ({self._best_text()})")
        if finite and self._improves(value):
            self._best_value, self._best_epoch, self._wait = value, epoch, 0
            self._is_improvement = True
        else:
            self._wait += 1
        if finite and self.divergence_threshold is not None:
            if self._at_least_as_good(self.divergence_threshold, value):
                return self._stop(
                    epoch,
                    f"{name} = {format_figure(value)} is past the divergence threshold "
                    f"{format_figure(self.divergence_threshold)} ({self._best_text()})",
                )
        if finite and self.stopping_threshold is not None:
            if self._at_least_as_good(value, self.stopping_threshold):
                return self._stop(
                    epoch,
                    f"{name} = {format_figure(value)} reached the stopping threshold "
                    f"{format_figure(self.stopping_threshold)} ({self._best_text()})",
                )
        if self._wait >= self.patience:
            if self._best_value is None:
                reason = f"{name} = {value} has had no finite value for {self._wait} evaluations"
            else:
                delta = ""
                if self.min_delta > 0:
                    delta = f" by more than {format_figure(self.min_delta)}"
                reason = (
                    f"{name} = {format_figure(value)} has not improved on "
                    f"{format_figure(self._best_value)} "
                    f"(epoch {self._best_epoch}){delta} for {self._wait} evaluations"
                )
            return self._stop(epoch, reason)
        return None

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def check_metrics(self, available) -> None:
        self.monitor.validate(available)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; `monitor` and `mode` are kept to refuse loading into another guard."""
        return {
            "monitor": self.monitor.source,
            "mode": self.mode,
            "best_value": self._best_value,
            "best_epoch": self._best_epoch,
            "wait": self._wait,
            "last_epoch": self._last_epoch,
            "is_improvement": self._is_improvement,
            "stopped_epoch": self._stopped_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, monitor=self.monitor.source, mode=self.mode)
        self._best_value = state["best_value"]
        self._best_epoch = state["best_epoch"]
        self._wait = state["wait"]
        self._last_epoch = state["last_epoch"]
        self._is_improvement = state["is_improvement"]
        self._stopped_epoch = state["stopped_epoch"]


def warmup_vs_early_stopping_warning(
    warmup_epochs: float, early_stopping_cfg: Any, *, eval_every_epochs: int = 1
) -> str | None:
    """A one-line warning when early stopping can end the run before a warm-up has finished.

    The earliest epoch at which `EarlyStopping` can stop on patience is
    ``start_epoch + patience * eval_every_epochs``: evaluations before start_epoch count for
    nothing, the best can come from the first counted evaluation (epoch start_epoch at the
    earliest), and `patience` evaluations without improvement follow it. The function warns when
    that epoch is strictly earlier than `warmup_epochs`, i.e. when the run can stop while the
    warm-up (of a KL weight, a learning rate, ...) is still going. It returns None when it is not,
    when `warmup_epochs <= 0`, and when early stopping is disabled (``cfg.enabled`` False).
    Thresholds and the finite check can stop a run earlier still; they are left out here.

    Example: a 30-epoch KL warm-up with patience 20 and start_epoch 0 warns (the run can stop at
    epoch 20; one did at epoch 25, its best at epoch 5); warm-up 15 with patience 25 does not.

    Args:
      warmup_epochs: Length of the warm-up in epochs.
      early_stopping_cfg: `config.guard.early_stopping` (start_epoch, patience, and enabled
        when present).
      eval_every_epochs: Epochs between evaluations (`config.eval.every_epochs`).
    """
    every = check_count(
        "warmup_vs_early_stopping_warning", "eval_every_epochs", eval_every_epochs, 1
    )
    if warmup_epochs <= 0 or not getattr(early_stopping_cfg, "enabled", True):
        return None
    start, patience = early_stopping_cfg.start_epoch, early_stopping_cfg.patience
    earliest_stop = start + patience * every
    if earliest_stop >= warmup_epochs:
        return None
    return (
        f"early stopping can end the run at epoch {earliest_stop} (start_epoch {start} + "
        f"patience {patience} x {every} epochs per evaluation), before the {warmup_epochs:g}-epoch "
        f"warm-up has finished; set guard.early_stopping.start_epoch to at least "
        f"{math.ceil(warmup_epochs)} (or raise patience) so the best checkpoint and the stop "
        f"come after the warm-up"
    )
