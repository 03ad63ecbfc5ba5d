"""The sequential object-pointing task (seed 004): the next object's position, or done.

An image with the first `k` objects of its visiting order marked -> the next object's
normalised `(x, y)` and a done logit (`k` = all objects: nothing is left). The modules, by
concern: `coords` (the one coordinate convention), `data` (embedded generator, mixed-mode
examples), `sources` (user images), `splits` (the splits from the config), `model`
(`PointerNet`), `loss` (spatial hinge + weighted done BCE, and the seed's discontinuous
hinge), `metrics` (`PointingMetrics` plus the done head's best guess), `guards`
(`guard.head_gradient_band`, `guard.done_never_predicted`,
`guard.lenient_threshold`), `report` (start-up and report
lines, tables, pictures, audit), `render` (the pictures), `checks` (config checks).
"""

from jaxguard.tasks.contract import Task
from jaxguard.tasks.pointer import checks, guards, loss, metrics, model, report, splits

TASK = Task(
    name="pointer",
    epoch_line=(
        ("px median", "pixel_error_median"),
        ("px p90", "pixel_error_p90"),
        ("done F1", "done_f1"),
        ("done p max", "done_prob_max_positive"),
    ),
    diagnostic_keys=("pixel_error_median", "done_prob_mean", "done_prob_std"),
    guard_names=(
        guards.HeadGradientBand.name,
        guards.DoneNeverPredicted.name,
        guards.LenientThreshold.name,
    ),
    check_config=checks.check_config,
    make_splits=splits.make_splits,
    make_model=model.make_model,
    make_loss=loss.make_loss,
    forward=model.forward,
    loss_inputs=loss.loss_inputs,
    empty_metrics=metrics.empty_metrics,
    update_metrics=metrics.update_metrics,
    head=model.head,
    histograms=report.histograms,
    prediction_table=report.prediction_table,
    report_lines=report.report_lines,
    audit=report.audit,
    make_guards=guards.make_guards,
    startup_lines=report.startup_lines,
    images=report.images,
    figures=report.run_figures,
)
