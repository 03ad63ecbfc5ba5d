"""Validation metrics of the optical-depth task: `jaxguard.metrics.RegressionMetrics`."""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxguard.metrics import RegressionMetrics


def empty_metrics(config: ConfigDict) -> RegressionMetrics:
    del config
    return RegressionMetrics.empty()


def update_metrics(metrics: RegressionMetrics, outputs, batch) -> RegressionMetrics:
    return metrics.update(outputs["pred"], batch["target"])
