"""The optical-depth task (seeds 000, 001): frame sequences regressed to one optical depth.

Frames `[batch, T, H, W, 1]` -> optical depth `[batch]`. The data generator knows the true
conditional mean (the oracle); the loss is a base error plus seed 000's collapse remedies
(`loss.py`); the collapse guard (`guard.collapse`) watches the prediction spread.
"""

from ml_collections import ConfigDict

from jaxguard.tasks.contract import Task
from jaxguard.tasks.optical_depth import loss, metrics, pretrain, report
from jaxguard.tasks.optical_depth.data import check_source_config, make_splits
from jaxguard.tasks.optical_depth.model import forward, head, make_model


def check_config(config: ConfigDict) -> None:
    """The task's keys (loss, generator, `data.source`): a ConfigError naming the first bad one."""
    loss.check_config(config)
    check_source_config(config)


TASK = Task(
    name="optical_depth",
    epoch_line=(("R²", "r2"), ("std ratio", "std_ratio"), ("pred std", "pred_std")),
    diagnostic_keys=("pred_std", "r2", "std_ratio"),
    check_config=check_config,
    make_splits=make_splits,
    make_model=make_model,
    make_loss=loss.make_loss,
    forward=forward,
    loss_inputs=loss.loss_inputs,
    empty_metrics=metrics.empty_metrics,
    update_metrics=metrics.update_metrics,
    head=head,
    histograms=report.histograms,
    prediction_table=report.prediction_table,
    report_lines=report.report_lines,
    audit=report.audit,
    startup_lines=report.startup_lines,
    pretrain=pretrain.pretrain,
    collapse_arrays=report.collapse_arrays,
    images=report.images,
    figures=report.run_figures,
)
