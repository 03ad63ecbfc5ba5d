"""The variance-collapse guard and the diagnostic dump written when it fires."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxguard._checks import check_same_shape
from jaxguard.guards.base import (
    Diagnostics,
    Evaluation,
    Guard,
    GuardEvent,
    check_advance,
    check_count,
    check_state_matches,
    format_figure,
)
from jaxguard.guards.monitor import MonitorExpression

# Metrics quoted next to the watched one in collapse messages, with their labels.
_COLLAPSE_FIGURES = (("pred_std", "pred std"), ("target_std", "target std"), ("r2", "r2"))


class CollapseGuard(Guard):
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

    The same metric is also checked on the diagnostics cadence inside each epoch
    (`on_diagnostics`, figures from one validation batch every `log.diagnostics_every_steps`
    steps; seed 000: "stop training if prediction std drops below a threshold", every N steps):
    `patience` checks in a row below `stop_below` from `start_epoch` on stop the run there,
    without waiting for the end of the epoch. Checks only stop; the warnings come from the
    evaluations.
    """

    name = "collapse"
    # Wording of the events; `EnsembleSpreadGuard` words the same rules for ensembles.
    spread_text = "prediction spread"
    stop_text = "variance collapse"
    consequence = "predictions are near-constant"
    figures = _COLLAPSE_FIGURES

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
        self._checks_below_stop = 0
        self._last_epoch: int | None = None
        self._stopped_epoch: int | None = None

    # The constructor arguments `from_config` reads from the guard's config section.
    config_keys = ("metric", "warn_below", "stop_below", "patience", "start_epoch")

    @classmethod
    def from_config(cls, cfg: Any) -> CollapseGuard:
        """From the guard's config section (`config.guard.collapse`); the caller checks
        `cfg.enabled`."""
        return cls(**{key: getattr(cfg, key) for key in cls.config_keys})

    @property
    def should_stop(self) -> bool:
        return self._stopped_epoch is not None

    def _figures(self, metrics: Mapping[str, float]) -> str:
        """The spread figures present in `metrics`, other than the watched metric itself."""
        parts = [
            f"{label} {format_figure(float(metrics[key]))}"
            for key, label in self.figures
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
                self.name,
                "info",
                f"{self.spread_text} recovered at epoch {epoch}: {name} {format_figure(value)} >= "
                f"{format_figure(self.warn_below)} after {stretch} evaluations below it",
                epoch,
            )
        self._below_warn += 1
        # Why: NaN compares False with everything, so it is counted as collapsed explicitly.
        self._below_stop = self._below_stop + 1 if not finite or value < self.stop_below else 0

        def below(threshold: float) -> str:
            if finite:
                return f"{name} {format_figure(value)} < {format_figure(threshold)}"
            return f"{name} {value} (non-finite, counted as below {format_figure(threshold)})"

        if self._below_stop >= self.patience:
            self._stopped_epoch = epoch
            return GuardEvent(
                self.name,
                "stop",
                f"{self.stop_text}: {below(self.stop_below)} for {self._below_stop} "
                f"evaluations{self._figures(metrics)}; {self.consequence} "
                f"(epoch {epoch}, warn_below {format_figure(self.warn_below)})",
                epoch,
            )
        if (self._below_warn - 1) % self.patience == 0:
            return GuardEvent(
                self.name,
                "warn",
                f"low {self.spread_text} at epoch {epoch}: {below(self.warn_below)} for "
                f"{self._below_warn} evaluations{self._figures(metrics)}; "
                f"{self._below_stop} of {self.patience} in a row below "
                f"{format_figure(self.stop_below)} stop the run",
                epoch,
            )
        return None

    def on_evaluation(self, evaluation: Evaluation) -> GuardEvent | None:
        return self.update(evaluation.epoch, evaluation.metrics)

    def on_diagnostics(self, diagnostics: Diagnostics) -> GuardEvent | None:
        """The in-epoch check on one validation batch; a "stop" event or None."""
        metrics = diagnostics.metrics
        if diagnostics.epoch < self.start_epoch or not set(self.metric.names) <= set(metrics):
            return None
        value = self.metric.evaluate(metrics)
        below = not math.isfinite(value) or value < self.stop_below
        self._checks_below_stop = self._checks_below_stop + 1 if below else 0
        if self._checks_below_stop < self.patience:
            return None
        self._stopped_epoch = diagnostics.epoch
        return GuardEvent(
            self.name,
            "stop",
            f"{self.stop_text} inside epoch {diagnostics.epoch} (step {diagnostics.step}): "
            f"{self.metric.source} {format_figure(value)} < {format_figure(self.stop_below)} on "
            f"a validation batch for {self._checks_below_stop} diagnostics checks in a row"
            f"{self._figures(metrics)}; {self.consequence}",
            diagnostics.epoch,
            diagnostics.step,
        )

    def check_metrics(self, available) -> None:
        self.metric.validate(available)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric.source,
            "below_warn": self._below_warn,
            "below_stop": self._below_stop,
            "checks_below_stop": self._checks_below_stop,
            "last_epoch": self._last_epoch,
            "stopped_epoch": self._stopped_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_matches(type(self).__name__, state, metric=self.metric.source)
        self._below_warn = state["below_warn"]
        self._below_stop = state["below_stop"]
        self._checks_below_stop = state["checks_below_stop"]
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
