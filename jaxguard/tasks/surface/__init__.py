"""The surface-segmentation task (seed 003): papyrus logits for every voxel of CT-like patches.

Patches `[batch, P, P, P]` of a volume -> papyrus logits of the same shape. The modules, by
concern: `data` (embedded volumes, patches), `readers` and `sources` (user volumes), `splits`,
`model` (3D UNet and augmentation), `loss` (the seed's five-term compound loss), `metrics`
(dice family and clDice), `guards` (`guard.plateau`, `guard.majority_class`), `report`
(start-up and report lines, tables, audit), `inference` and `export` (sliding-window
inference over the full test volumes), `checks` (config checks).
"""

from jaxguard.tasks.contract import Task
from jaxguard.tasks.surface import checks, export, guards, loss, metrics, model, report, splits

TASK = Task(
    name="surface",
    epoch_line=(
        ("dice", "dice"),
        ("clDice", "cldice"),
        ("fg pred", "fg_fraction_pred"),
        ("fg true", "fg_fraction_true"),
    ),
    diagnostic_keys=("dice", "cldice", "fg_fraction_pred"),
    guard_names=(guards.PlateauGuard.name, guards.MajorityClassGuard.name),
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
    export=export.export,
    images=report.images,
    figures=report.run_figures,
)
