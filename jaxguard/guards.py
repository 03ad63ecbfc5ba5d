"""Guards that catch silent training failures while a run is going.

The training loop calls them on the host with plain Python numbers:

* `EarlyStopping.update(epoch, val_metrics)` after every evaluation: stops on a plateau of a
  monitored metric or expression (``"r2"``, ``"loss - 2 * r2"``), on a target or divergence
  threshold, or on a NaN monitor, and says when the value is the best so far (the loop saves the
  best checkpoint then).
* `CollapseGuard.update(epoch, val_metrics)` after every evaluation: warns, then stops, when the
  predictions lose their spread (``std_ratio = pred_std / target_std`` near 0), the failure that
  a flat validation loss hides (all three runs of one post-mortem reached val loss 0.51-0.53
  while one of them predicted a near-constant 0.72).
* `NonFiniteGuard.update(step, consecutive, total, terms)` at every logging step: warns when the
  train step starts skipping non-finite updates and stops after too many in a row.

Each `update` returns a `GuardEvent` or None; a "stop" event ends the run. Each guard has
`state_dict()` / `load_state_dict()` with JSON-able values, so `--resume` continues exactly.
Epochs and steps passed to one guard must increase from call to call, and a guard that has
stopped refuses further updates, so a double call or a resume from the wrong state fails loudly.

`collapse_diagnostics` gives the figures for the dump written when the collapse guard fires, and
`warmup_vs_early_stopping_warning` flags configs in which early stopping can end a run before a
warm-up (e.g. of the KL weight) has finished.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxguard._checks import check_positive, check_same_shape

_LEVELS = ("info", "warn", "stop")
_MODES = ("min", "max")
_VAL_PREFIX = "val_"
_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_ALLOWED = "use numbers, metric names, + - * /, unary - and parentheses"
# Metrics quoted next to the watched one in collapse messages, with their labels.
_COLLAPSE_FIGURES = (("pred_std", "pred std"), ("target_std", "target std"), ("r2", "r2"))


def _fmt(value: float) -> str:
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


def _check_optional_finite(owner: str, name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be finite or None, got {value}.")
    return float(value)


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
      guard: The guard that reported it: "early_stopping", "collapse" or "nonfinite".
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
        if self.level not in _LEVELS:
            raise ValueError(f"GuardEvent: `level` must be one of {_LEVELS}, got {self.level!r}.")


def _canonical(name: str) -> str:
    """The metric a name refers to: validation metrics are unprefixed, so `val_` is dropped."""
    if name.startswith(_VAL_PREFIX) and len(name) > len(_VAL_PREFIX):
        return name[len(_VAL_PREFIX) :]
    return name


class MonitorExpression:
    """A metric name or an arithmetic expression of validation metrics, compiled safely.

    The grammar is numbers, metric names, ``+ - * /``, unary ``-`` and parentheses, checked on
    the parsed syntax tree, so ``"r2"``, ``"loss - 2 * r2"`` and ``"-(loss + r2) / 2"`` are
    accepted while calls, attribute access, subscripts, other operators and non-numeric
    constants raise ValueError naming the offending part. Nothing is passed to `eval`.

    Names resolve against a dict of validation metrics with unprefixed keys (``{"loss": 0.53,
    "r2": -0.2}``); a ``val_`` prefix is accepted and dropped, so ``"val_loss - 2*r2"`` reads
    the metrics ``loss`` and ``r2``. Arithmetic is float64 and follows IEEE rules: a division by
    zero gives +-inf or NaN (which `EarlyStopping` treats as non-finite) rather than raising.

    Attributes:
      source: The expression as given, without surrounding whitespace.
      names: The metric names it reads (prefix dropped), in order of first appearance.
    """

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(
                f"MonitorExpression: `source` must be a non-empty string, got {source!r}."
            )
        self.source = source.strip()
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as error:
            raise ValueError(
                f"monitor {self.source!r} is not a valid expression ({error.msg}); {_ALLOWED}."
            ) from None
        self._body = tree.body
        names: list[str] = []
        self._check_node(self._body, names)
        self.names = tuple(names)

    def _check_node(self, node: ast.expr, names: list[str]) -> None:
        """Fails on any node outside the grammar; collects the metric names in source order."""
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
            self._check_node(node.left, names)
            self._check_node(node.right, names)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            self._check_node(node.operand, names)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return
        elif isinstance(node, ast.Name):
            name = _canonical(node.id)
            if name not in names:
                names.append(name)
        else:
            raise ValueError(
                f"monitor {self.source!r}: {self._describe(node)} "
                f"`{ast.get_source_segment(self.source, node)}` is not allowed; {_ALLOWED}."
            )

    @staticmethod
    def _describe(node: ast.expr) -> str:
        if isinstance(node, ast.Call):
            return "the call"
        if isinstance(node, ast.Attribute):
            return "the attribute access"
        if isinstance(node, ast.Subscript):
            return "the subscript"
        if isinstance(node, ast.Constant):
            return "the non-numeric constant"
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            return f"the operator {type(node.op).__name__} in"
        return f"the {type(node).__name__} expression"

    def validate(self, available_names: Iterable[str]) -> None:
        """Fails, in one line naming the closest available metric, when a name is unknown."""
        available = sorted(set(available_names))
        unknown = []
        for name in self.names:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                unknown.append(f"{name!r}{hint}")
        if unknown:
            raise ValueError(
                f"monitor {self.source!r}: unknown metric {', '.join(unknown)}; "
                f"available: {', '.join(available)}."
            )

    def evaluate(self, metrics: Mapping[str, float]) -> float:
        """The value of the expression on one evaluation's metrics.

        Raises:
          KeyError: a metric the expression reads is missing; the message lists the available ones.
        """
        missing = [name for name in self.names if name not in metrics]
        if missing:
            raise KeyError(
                f"monitor {self.source!r} reads {', '.join(missing)}, missing from the metrics; "
                f"available: {', '.join(sorted(metrics))}."
            )
        # Why: a zero denominator must give inf/NaN for the finite check, not a warning or raise.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return float(self._evaluate(self._body, metrics))

    def _evaluate(self, node: ast.expr, metrics: Mapping[str, float]) -> np.float64:
        if isinstance(node, ast.BinOp):
            return _BINARY_OPERATORS[type(node.op)](
                self._evaluate(node.left, metrics), self._evaluate(node.right, metrics)
            )
        if isinstance(node, ast.UnaryOp):
            return -self._evaluate(node.operand, metrics)
        if isinstance(node, ast.Constant):
            return np.float64(node.value)
        return np.float64(float(metrics[_canonical(node.id)]))


class EarlyStopping:
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
        if mode not in _MODES:
            raise ValueError(f"{owner}: `mode` must be 'min' or 'max', got {mode!r}.")
        self.mode = mode
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
        return f"best {_fmt(self._best_value)} (epoch {self._best_epoch})"

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
                    f"{name} = {_fmt(value)} is past the divergence threshold "
                    f"{_fmt(self.divergence_threshold)} ({self._best_text()})",
                )
        if finite and self.stopping_threshold is not None:
            if self._at_least_as_good(value, self.stopping_threshold):
                return self._stop(
                    epoch,
                    f"{name} = {_fmt(value)} reached the stopping threshold "
                    f"{_fmt(self.stopping_threshold)} ({self._best_text()})",
                )
        if self._wait >= self.patience:
            if self._best_value is None:
                reason = f"{name} = {value} has had no finite value for {self._wait} evaluations"
            else:
                delta = f" by more than {_fmt(self.min_delta)}" if self.min_delta > 0 else ""
                reason = (
                    f"{name} = {_fmt(value)} has not improved on {_fmt(self._best_value)} "
                    f"(epoch {self._best_epoch}){delta} for {self._wait} evaluations"
                )
            return self._stop(epoch, reason)
        return None

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


class CollapseGuard:
    """Warns, then stops, when the predictions lose their spread (variance collapse).

    Call `update(epoch, metrics)` after every evaluation from `start_epoch` on (earlier ones are
    ignored). The watched `metric` (``std_ratio = pred_std / target_std``, or ``pred_std`` with
    thresholds in target units) is compared with two levels; a NaN or infinite value counts as
    collapsed, because NaN predictions have no spread at all:

    * Below `stop_below` for `patience` evaluations in a row: a "stop" event whose message starts
      ``variance collapse:`` and gives the value, the thresholds and, when present in the
      metrics, pred_std, target_std and r2. An evaluation at or above `stop_below` resets that
      count.
    * Below `warn_below`: a "warn" event on the first evaluation below it and then on every
      `patience`-th evaluation of the same stretch below it (evaluations 1, 1 + patience,
      1 + 2 * patience, ...), so a long low stretch is reported without repeating every epoch.
    * Back at or above `warn_below` after a stretch below it: one "info" event (recovered).
    """

    def __init__(
        self,
        metric: str = "std_ratio",
        warn_below: float = 0.5,
        stop_below: float = 0.1,
        patience: int = 3,
        start_epoch: int = 1,
    ):
        owner = type(self).__name__
        self.metric = MonitorExpression(metric)
        if not (math.isfinite(warn_below) and math.isfinite(stop_below)) or stop_below > warn_below:
            raise ValueError(
                f"{owner}: `stop_below` ({stop_below}) and `warn_below` ({warn_below}) must be "
                f"finite with stop_below <= warn_below."
            )
        self.warn_below = float(warn_below)
        self.stop_below = float(stop_below)
        self.patience = check_count(owner, "patience", patience, 1)
        self.start_epoch = check_count(owner, "start_epoch", start_epoch, 0)
        self._below_warn = 0
        self._below_stop = 0
        self._last_epoch: int | None = None
        self._stopped_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CollapseGuard:
        """From `config.guard.collapse`; the caller checks `cfg.enabled`."""
        return cls(
            metric=cfg.metric,
            warn_below=cfg.warn_below,
            stop_below=cfg.stop_below,
            patience=cfg.patience,
            start_epoch=cfg.start_epoch,
        )

    @property
    def should_stop(self) -> bool:
        return self._stopped_epoch is not None

    def _figures(self, metrics: Mapping[str, float]) -> str:
        """The spread figures present in `metrics`, other than the watched metric itself."""
        parts = [
            f"{label} {_fmt(float(metrics[key]))}"
            for key, label in _COLLAPSE_FIGURES
            if key in metrics and key not in self.metric.names
        ]
        return f" ({', '.join(parts)})" if parts else ""

    def update(self, epoch: int, metrics: Mapping[str, float]) -> GuardEvent | None:
        """Takes one evaluation's metrics; returns a "stop", "warn" or "info" event, or None.

        Args:
          epoch: The epoch of this evaluation; must increase from call to call.
          metrics: Validation metrics by unprefixed name, with the watched metric and, for the
            messages, pred_std, target_std and r2 when available.
        """
        epoch = check_advance(
            type(self).__name__, "epoch", epoch, self._last_epoch, self._stopped_epoch
        )
        value = self.metric.evaluate(metrics)
        self._last_epoch = epoch
        if epoch < self.start_epoch:
            return None
        name = self.metric.source
        finite = math.isfinite(value)
        if finite and value >= self.warn_below:
            stretch = self._below_warn
            self._below_warn = self._below_stop = 0
            if stretch == 0:
                return None
            return GuardEvent(
                "collapse",
                "info",
                f"prediction spread recovered at epoch {epoch}: {name} {_fmt(value)} >= "
                f"{_fmt(self.warn_below)} after {stretch} evaluations below it",
                epoch,
            )
        self._below_warn += 1
        # Why: NaN compares False with everything, so it is counted as collapsed explicitly.
        self._below_stop = self._below_stop + 1 if not finite or value < self.stop_below else 0

        def below(threshold: float) -> str:
            if finite:
                return f"{name} {_fmt(value)} < {_fmt(threshold)}"
            return f"{name} {value} (non-finite, counted as below {_fmt(threshold)})"

        if self._below_stop >= self.patience:
            self._stopped_epoch = epoch
            return GuardEvent(
                "collapse",
                "stop",
                f"variance collapse: {below(self.stop_below)} for {self._below_stop} "
                f"evaluations{self._figures(metrics)}; predictions are near-constant "
                f"(epoch {epoch}, warn_below {_fmt(self.warn_below)})",
                epoch,
            )
        if (self._below_warn - 1) % self.patience == 0:
            return GuardEvent(
                "collapse",
                "warn",
                f"low prediction spread at epoch {epoch}: {below(self.warn_below)} for "
                f"{self._below_warn} evaluations{self._figures(metrics)}; "
                f"{self._below_stop} of {self.patience} in a row below {_fmt(self.stop_below)} "
                f"stop the run",
                epoch,
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric.source,
            "below_warn": self._below_warn,
            "below_stop": self._below_stop,
            "last_epoch": self._last_epoch,
            "stopped_epoch": self._stopped_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, metric=self.metric.source)
        self._below_warn = state["below_warn"]
        self._below_stop = state["below_stop"]
        self._last_epoch = state["last_epoch"]
        self._stopped_epoch = state["stopped_epoch"]


def _json_float(value: float) -> float | None:
    """A float for a JSON dump; None where the figure is undefined (strict JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def _summary(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
        f"{prefix}_spread": float(values.max() - values.min()),
    }


def collapse_diagnostics(
    pred: np.ndarray, target: np.ndarray, bins: int = 10, *, quantile_bins: int = 5
) -> dict[str, Any]:
    """Figures for the diagnostic dump of a variance collapse, as JSON-able values.

    All elements are pooled in float64; pairs where pred or target is NaN or infinite are
    dropped and counted. Standard deviations are population ones (ddof=0), as in the metrics.

    Args:
      pred: `[...]` predictions.
      target: `[...]` targets, same shape as `pred`.
      bins: Number of bins of the prediction histogram.
      quantile_bins: Number of groups of equal size (by target rank) for ``by_target_quantile``.

    Returns:
      A dict with
        count, nonfinite: finite pairs used, and pairs dropped.
        pred_mean, pred_std, pred_min, pred_max, pred_spread (max - min), and target_* alike.
        std_ratio: pred_std / target_std; variance_ratio: pred_var / target_var (the square of
          std_ratio: a 3.4% std ratio is a 0.12% variance ratio). None for a constant target.
        pred_histogram_counts, pred_histogram_edges: `np.histogram(pred, bins)`.
        fraction_targets_above_pred_max, fraction_targets_below_pred_min: the share of targets
          that no prediction reaches from below or above.
        by_target_quantile: per group of targets sorted by value (lowest first), a dict with
          count, target_min, target_max, target_mean and pred_mean; a pred_mean far below the
          target_mean of the top groups shows a model that underpredicts high targets.
      When no pair is finite (e.g. NaN predictions), only count and nonfinite.
    """
    owner = "collapse_diagnostics"
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    check_same_shape(owner, pred=pred, target=target)
    bins = check_count(owner, "bins", bins, 1)
    quantile_bins = check_count(owner, "quantile_bins", quantile_bins, 1)
    finite = np.isfinite(pred) & np.isfinite(target)
    p, t = pred[finite], target[finite]
    result: dict[str, Any] = {"count": int(p.size), "nonfinite": int(pred.size - p.size)}
    if p.size == 0:
        return result
    result.update(_summary("pred", p))
    result.update(_summary("target", t))
    # Why: a constant target has no spread to compare with; the ratio is undefined, not inf.
    with np.errstate(divide="ignore", invalid="ignore"):
        result["std_ratio"] = _json_float(np.float64(p.std()) / t.std())
        result["variance_ratio"] = _json_float(np.float64(p.var()) / t.var())
    counts, edges = np.histogram(p, bins=bins)
    result["pred_histogram_counts"] = counts.tolist()
    result["pred_histogram_edges"] = edges.tolist()
    result["fraction_targets_above_pred_max"] = float(np.mean(t > p.max()))
    result["fraction_targets_below_pred_min"] = float(np.mean(t < p.min()))
    groups = np.array_split(np.argsort(t, kind="stable"), quantile_bins)
    result["by_target_quantile"] = [
        {
            "count": int(group.size),
            "target_min": float(t[group].min()),
            "target_max": float(t[group].max()),
            "target_mean": float(t[group].mean()),
            "pred_mean": float(p[group].mean()),
        }
        for group in groups
        if group.size
    ]
    return result


class NonFiniteGuard:
    """Stops a run whose train step keeps skipping non-finite updates.

    The train step skips updates with a NaN or infinite loss or gradient
    (`optax.apply_if_finite` counts them); at every logging step the loop passes those
    counters and the latest logged terms. Events:

    * "warn" when the total has grown and the new skips do not all extend a streak already
      reported (a new skip streak): at most one per logging step, none while a reported streak
      keeps growing.
    * "stop" when ``consecutive_nonfinite >= max_consecutive``, naming the step and the terms
      whose logged value is NaN or infinite.

    Only what the counters show at logging steps is seen: a streak that reaches
    `max_consecutive` and ends between two logging steps is reported as a new streak (warn),
    not as a stop. Set apply_if_finite's `max_consecutive_errors` above `max_consecutive` or log
    every step where that matters.
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = check_count(
            type(self).__name__, "max_consecutive", max_consecutive, 1
        )
        self._last_step: int | None = None
        self._last_consecutive = 0
        self._last_total = 0
        self._stopped_step: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> NonFiniteGuard:
        """From `config.guard.nonfinite`."""
        return cls(max_consecutive=cfg.max_consecutive)

    @property
    def should_stop(self) -> bool:
        return self._stopped_step is not None

    def update(
        self,
        step: int,
        consecutive_nonfinite: int,
        total_nonfinite: int,
        terms: Mapping[str, float],
    ) -> GuardEvent | None:
        """Takes the skip counters at one logging step; returns a "warn" or "stop" event, or None.

        Args:
          step: The training step; must increase from call to call.
          consecutive_nonfinite: Updates skipped in a row up to this step (0 after a good one).
          total_nonfinite: Updates skipped since the start of the run; never decreases.
          terms: The latest logged loss terms and norms, e.g. ``{"loss/kl": nan,
            "grad_norm": inf}``; those that are NaN or infinite are named in the messages.
        """
        owner = type(self).__name__
        step = check_advance(owner, "step", step, self._last_step, self._stopped_step)
        consecutive = check_count(owner, "consecutive_nonfinite", consecutive_nonfinite, 0)
        total = check_count(owner, "total_nonfinite", total_nonfinite, 0)
        if consecutive > total or total < self._last_total:
            raise ValueError(
                f"{owner}: inconsistent counters at step {step}: consecutive_nonfinite "
                f"{consecutive}, total_nonfinite {total} (was {self._last_total}); the total "
                f"must not decrease nor be below the consecutive count."
            )
        new_skips = total - self._last_total
        # Why: the skips since the last call all extend the reported streak only if the run of
        # consecutive skips grew by exactly that many; anything else means a new streak began.
        same_streak = (
            self._last_consecutive > 0 and consecutive - self._last_consecutive == new_skips
        )
        self._last_step, self._last_consecutive, self._last_total = step, consecutive, total
        bad_terms = [key for key, value in terms.items() if not math.isfinite(float(value))]
        terms_text = ", ".join(bad_terms) or "none of the logged values"
        if consecutive >= self.max_consecutive:
            self._stopped_step = step
            return GuardEvent(
                "nonfinite",
                "stop",
                f"non-finite loss: {consecutive} updates in a row skipped up to step {step} "
                f"({total} in total); non-finite terms: {terms_text}",
                step=step,
            )
        if new_skips > 0 and not same_streak:
            return GuardEvent(
                "nonfinite",
                "warn",
                f"non-finite updates skipped up to step {step}: {new_skips} new, {consecutive} in "
                f"a row, {total} in total (stop at {self.max_consecutive} in a row); "
                f"non-finite terms: {terms_text}",
                step=step,
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_consecutive": self.max_consecutive,
            "last_step": self._last_step,
            "last_consecutive": self._last_consecutive,
            "last_total": self._last_total,
            "stopped_step": self._stopped_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, max_consecutive=self.max_consecutive)
        self._last_step = state["last_step"]
        self._last_consecutive = state["last_consecutive"]
        self._last_total = state["last_total"]
        self._stopped_step = state["stopped_step"]


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
