"""The cVAE precipitation-downscaling task (seed 002): fine rain fields from coarse predictors.

Coarse predictors `y` `[batch, h, w, C]` -> the fine daily precipitation field `x`
`[batch, H, W]` (mm/day), by a conditional VAE. The modules, by concern: `data` (embedded
generator, `.npz` loader), `splits` (the processed splits, the extreme threshold), `model`
(`DownscalingCVAE`, `forward`) and `augment` (training-time augmentation), `loss` (the seed's
four-term composite and its ratio bug), `metrics` (`CVAEMetrics`), `guards`
(`guard.active_units`, `guard.volatility`), `report` (start-up and report lines, audit,
prediction table, TensorBoard), `export` and `panel` (the ensemble panel, shared with
`python -m jaxguard.sample`), `checks` (config checks).
"""

from jaxguard.tasks.contract import Task
from jaxguard.tasks.cvae import build, checks, export, guards, loss, metrics, report, splits

TASK = Task(
    name="cvae",
    epoch_line=(
        ("MAE", "mae_all"),
        ("tail MAE", "mae_tail"),
        ("rec loss", "rec_loss"),
        ("KL", "kl"),
        ("active units", "active_units"),
    ),
    diagnostic_keys=("mae_all", "recon_mae_all", "correlation", "kl", "active_units"),
    guard_names=guards.GUARD_NAMES,
    check_config=checks.check_config,
    make_splits=splits.make_splits,
    make_model=build.make_model,
    make_loss=loss.make_loss,
    forward=build.forward,
    loss_inputs=loss.loss_inputs,
    empty_metrics=metrics.empty_metrics,
    update_metrics=metrics.update_metrics,
    head=build.head,
    histograms=report.histograms,
    prediction_table=report.prediction_table,
    report_lines=report.report_lines,
    audit=report.audit,
    make_guards=guards.make_guards,
    startup_lines=report.startup_lines,
    images=report.images,
    figures=report.run_figures,
    export=export.export,
)
