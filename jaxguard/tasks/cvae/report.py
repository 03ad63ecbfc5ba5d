"""What the cVAE task shows: start-up lines, report lines, audit, prediction table, TensorBoard.

`report_lines` gives the task's own lines of report.txt from the harness's `RunSummary` (the
harness adds the best epoch, the stop reason and the training time), including the KL weight
at the best epoch and a summary of the epoch-to-epoch changes of the validation reconstruction
loss (from `summary.history`). The sample panel is written by `export.py`; `images` (each
evaluation) and `run_figures` (the rank histogram, reliability and spread/skill figures at the
end) are drawn with `jaxguard.figures`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from ml_collections import ConfigDict

from jaxguard import figures, losses
from jaxguard import guards as guards_lib
from jaxguard.tasks.contract import RunSummary
from jaxguard.tasks.cvae import panel
from jaxguard.tasks.cvae.loss import beta_warmup_steps
from jaxguard.tasks.cvae.splits import extreme_threshold, raw_splits


def _extreme_share(split) -> str:
    flags = split["has_extreme"]
    return f"{int(flags.sum())} of {len(flags)} ({flags.mean():.1%})"


def startup_lines(config: ConfigDict, splits) -> list[str]:
    """The data, its extremes, oversampling and augmentation, and warnings about the config."""
    raw = raw_splits(config)
    train = raw["train"]
    x = train["x"]
    threshold = extreme_threshold(config)
    source = config.data.source or "embedded generator"
    flags = {name: (s["x"].reshape(len(s["x"]), -1).max(1) > threshold) for name, s in raw.items()}
    lines = [
        f"data: {source}; x {x.shape[1]}x{x.shape[2]} mm/day from y "
        f"{'x'.join(map(str, train['y'].shape[1:]))}; {len(x)} train / {len(raw['val']['x'])} val "
        f"/ {len(raw['test']['x'])} test samples; train x mean {x.mean():.3g}, dry pixels "
        f"{np.mean(x <= 0):.0%}, 99.9th percentile {np.quantile(x, 0.999):.3g}",
        f"extremes: x > {threshold:.4g} mm/day in "
        + ", ".join(
            f"{name} {int(f.sum())} of {len(f)} samples ({f.mean():.1%})"
            for name, f in flags.items()
        ),
    ]
    repeats = config.data.oversample_extremes
    if repeats > 1:
        lines.append(
            f"oversampling: each extreme training sample {repeats}x, {len(splits['train']['x'])} "
            f"training rows from {len(x)} samples"
        )
    augment = config.data.augment
    used = [
        name
        for name, on in (
            ("flips", augment.flips),
            ("rotations", augment.rotations),
            (f"input noise {augment.input_noise:g}", augment.input_noise > 0),
            (f"mixup alpha {augment.mixup_alpha:g}", augment.mixup_alpha > 0),
        )
        if on
    ]
    if used:
        lines.append("augmentation: " + ", ".join(used))
    warning = guards_lib.warmup_vs_early_stopping_warning(
        config.loss.beta_warmup_epochs, config.guard.early_stopping
    )
    if warning:
        lines.append(f"warning: KL weight warm-up: {warning}")
    if config.loss.extreme_ratio_scaling:
        lines.append(
            "warning: loss.extreme_ratio_scaling reproduces seed 002's bug: the extreme term is "
            "multiplied by the share of batch samples holding extremes "
            f"({flags['train'].mean():.1%} of training samples), so "
            f"lambda_ext={config.loss.lambda_ext:g} acts as far less"
        )
    return lines


def audit(config: ConfigDict, splits) -> dict:
    """Extreme days and pixels of every split and how often a batch sees one (`jaxguard.audit`).

    Returns:
      `{split: figures, ..., "recommendations": [lines]}`. Figures (high-resolution
      fields `x`, mm/day; the training split as training sees it, oversampled days
      repeated): `days`, `extreme_days` and `extreme_day_rate` (days with some pixel
      above the extreme threshold), `extreme_pixels` and `extreme_pixel_rate`, `mean`,
      `dry_pixels` (share <= 0), `q999` (99.9th percentile) and `max`.
    """
    threshold = extreme_threshold(config)
    result: dict = {}
    for name, split in splits.items():
        x = np.asarray(split["x"], np.float64)
        extreme = x > threshold
        extreme_days = int(np.sum(split["has_extreme"] > 0))
        result[name] = {
            "days": len(x),
            "extreme_days": extreme_days,
            "extreme_day_rate": extreme_days / len(x),
            "extreme_pixels": int(extreme.sum()),
            "extreme_pixel_rate": float(extreme.mean()),
            "mean": float(x.mean()),
            "dry_pixels": float(np.mean(x <= 0)),
            "q999": float(np.quantile(x, 0.999)),
            "max": float(x.max()),
        }
    train, batch = result["train"], config.train.batch_size
    rate = train["extreme_day_rate"]
    # Batches drawn without replacement from the shuffled split; with replacement is close.
    with_extreme = 1.0 - (1.0 - rate) ** batch
    advice = [
        f"extreme: x > {threshold:.4g} mm/day; train: {rate:.2%} of days, "
        f"{train['extreme_pixel_rate']:.3%} of pixels",
        f"a batch of {batch} holds an extreme day {with_extreme:.0%} of the time: the extreme "
        f"term (lambda_ext={config.loss.lambda_ext:g}) is 0 in the other batches, so the "
        "training loss jumps between the two kinds of batch"
        + (
            "; data.oversample_extremes=k repeats each extreme day k times"
            if config.data.oversample_extremes == 1
            else ""
        ),
    ]
    if config.loss.extreme_ratio_scaling:
        advice.append(
            "loss.extreme_ratio_scaling is on (seed 002's bug): the extreme term is scaled by "
            "the share of batch samples with extremes, so lambda_ext acts as far less"
        )
    for name in ("val", "test"):
        days = result[name]["extreme_days"]
        if days == 0:
            advice.append(f"{name} has no extreme day: its tail MAE is undefined")
        elif days < 20:
            advice.append(
                f"{name} has {days} extreme days: its tail MAE rests on few days and moves "
                f"a lot between runs; more days (data.num_{name}) give steadier figures"
            )
    result["recommendations"] = advice
    return result


def histograms(outputs, batch) -> dict[str, np.ndarray]:
    """TensorBoard histograms: generated fields, true fields, posterior means."""
    return {
        "generated": np.asarray(outputs["generated"]),
        "targets": np.asarray(batch["x"]),
        "posterior_mean": np.asarray(outputs["mean"]),
    }


def prediction_table(outputs, batch) -> dict[str, np.ndarray]:
    """One row per test sample: field maxima and means, errors, the extreme flag and the KL."""
    target = np.asarray(batch["x"], np.float64)
    generated = np.asarray(outputs["generated"], np.float64)
    pred = np.asarray(outputs["pred"], np.float64)
    flat = lambda a: a.reshape(len(a), -1)
    kl = np.asarray(
        losses.gaussian_kl(
            outputs["mean"], outputs["logvar"], outputs["prior_mean"], outputs["prior_logvar"]
        )
    )
    return {
        "has_extreme": batch["has_extreme"],
        "true_max": flat(target).max(1),
        "generated_max": flat(generated).max(1),
        "reconstructed_max": flat(pred).max(1),
        "true_mean": flat(target).mean(1),
        "generated_mean": flat(generated).mean(1),
        "generated_mae": np.abs(flat(generated) - flat(target)).mean(1),
        "reconstructed_mae": np.abs(flat(pred) - flat(target)).mean(1),
        "kl": kl,
    }


def volatility_summary(history) -> str | None:
    """Epoch-to-epoch change of the validation `rec_loss` over `history`, as one report line.

    Args:
      history: one record per epoch with `val_rec_loss` (`RunSummary.history`).

    Returns:
      The line, or None with fewer than two finite values.
    """
    values = [float(record["val_rec_loss"]) for record in history]
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return None
    changes = [(b - a) / abs(a) for a, b in zip(values, values[1:], strict=False) if a]
    largest = max(changes, key=abs)
    return (
        f"validation reconstruction loss over {len(values)} epochs: {min(values):.4g} to "
        f"{max(values):.4g} (max/min {max(values) / min(values):.2f}); largest epoch-to-epoch "
        f"change {largest:+.0%}, median |change| {np.median(np.abs(changes)):.0%}"
    )


def report_lines(config: ConfigDict, splits, summary: RunSummary) -> list[str]:
    """The task's lines of report.txt: the loss, the data, the test figures, the KL warm-up."""
    test = summary.test
    unique_train = len(raw_splits(config)["train"]["x"])
    warmup_steps = beta_warmup_steps(config, summary.steps_per_epoch)
    best_step = (summary.best_epoch + 1) * summary.steps_per_epoch
    beta_share = min(best_step / warmup_steps, 1.0) if warmup_steps else 1.0
    lines = [
        f"cVAE downscaling (seed {config.seed}), workdir {summary.workdir}",
        f"loss: lambda_base {config.loss.lambda_base:g}, lambda_ext {config.loss.lambda_ext:g} "
        f"({'ratio-scaled, seed 002 bug' if config.loss.extreme_ratio_scaling else 'as given'}), "
        f"beta {config.loss.beta:g} warmed up over {config.loss.beta_warmup_epochs:g} epochs, "
        f"lambda_mass {config.loss.lambda_mass:g}, lambda_crps {config.loss.lambda_crps:g} "
        f"({config.loss.crps_members} prior members per step)",
        f"parameters {summary.param_count:,}, {summary.param_count / unique_train:.0f} per "
        f"training sample ({unique_train} samples)",
        f"test split: {_extreme_share(splits['test'])} samples hold pixels above "
        f"{extreme_threshold(config):.4g} mm/day ({int(test['count_tail'])} pixels)",
        f"generated (prior mean, x unseen): MAE {test['mae_all']:.4f}, tail MAE "
        f"{test['mae_tail']:.4f}, tail RMSE {test['rmse_tail']:.4f}, correlation "
        f"{test['correlation']:.3f}",
        f"tail bias {test['bias_tail']:+.3f} mm/day; heavy-day peaks at "
        f"{test['peak_ratio']:.0%} of the truth; extreme frequency: predicted "
        f"{test['extreme_freq_pred']:.3%} vs true {test['extreme_freq_true']:.3%}",
        f"reconstructed (posterior mean): MAE {test['recon_mae_all']:.4f}, tail MAE "
        f"{test['recon_mae_tail']:.4f}",
        f"KL {test['kl']:.4g} nats, active latent units {int(test['active_units'])} of "
        f"{config.model.d_z}, mass error {test['mass_error']:.4f} mm/day",
        f"KL weight at the best epoch ({summary.best_epoch}): {beta_share:.0%} of loss.beta",
    ]
    if "spread_skill" in test:
        lines += ensemble_lines(test, extreme_threshold(config))
    volatility = volatility_summary(summary.history)
    if volatility:
        lines.append(volatility)
    return lines


def ensemble_lines(figures: Mapping, threshold: float) -> list[str]:
    """Report lines of an ensemble's scores (the `EnsembleMetrics` keys of `CVAEMetrics`).

    Args:
      figures: `crps`, `mae_all` (the prior-mean field's), `ensemble_mean_mae`, `spread`,
        `ensemble_mean_rmse`, `spread_skill`, `rank_histogram` (`[M + 1]` shares),
        `rank_low`, `rank_high`, the `wet_*` ones, `brier`, `brier_skill`, `reliability`.
      threshold: the exceedance threshold of the Brier scores (mm/day).
    """
    shares = np.asarray(figures["rank_histogram"], np.float64)
    members = len(shares) - 1
    return [
        f"ensemble of {members} prior draws per day: fair CRPS {figures['crps']:.4f} mm/day "
        f"({figures['crps'] / figures['mae_all']:.2f} x the prior-mean field's MAE), "
        f"ensemble-mean MAE {figures['ensemble_mean_mae']:.4f}",
        f"spread/skill {figures['spread_skill']:.3f} (1 when calibrated; wet pixels "
        f"{figures['wet_spread_skill']:.3f}): member spread {figures['spread']:.4f} vs "
        f"ensemble-mean RMSE {figures['ensemble_mean_rmse']:.4f} mm/day",
        f"rank of the truth among the members (uniform {1 / (members + 1):.3f} per bin): below "
        f"every member {figures['rank_low']:.3f}, above every member {figures['rank_high']:.3f}"
        f"; wet pixels {figures['wet_rank_low']:.3f} / {figures['wet_rank_high']:.3f}; bins "
        + " ".join(f"{share:.3f}" for share in shares),
        f"exceeding {threshold:.4g} mm/day: Brier score {figures['brier']:.3g}, skill "
        f"{figures['brier_skill']:.3f} against the training base rate, reliability "
        f"{figures['reliability']:.3g}",
    ]


def images(outputs, batch) -> dict[str, np.ndarray]:
    """TensorBoard: the heaviest validation day: predictors, truth, reconstruction, generated."""
    k = int(np.argmax(np.asarray(batch["x"]).reshape(len(batch["x"]), -1).max(axis=1)))
    fields = np.stack([outputs["pred"][k], outputs["generated"][k]])[None]
    figure = panel.panel_figure(
        np.asarray(batch["y"][k : k + 1]),
        np.asarray(batch["x"][k : k + 1]),
        np.asarray(fields),
        threshold=math.inf,  # No threshold reaches this hook; no contour is drawn.
        title="heaviest validation day",
        row_labels=[f"sample {k}"],
        member_labels=["reconstructed", "generated"],
    )
    return {"val/heaviest_day": figures.to_rgb(figure)}


def ensemble_figures(figures_in: Mapping, history, threshold: float) -> dict[str, Figure]:
    """The rank histogram, reliability diagram and spread/skill of an ensemble's scores.

    Args:
      figures_in: `rank_histogram`, `reliability_observed` and `reliability_counts` (`[M + 1]`
        each, the `EnsembleMetrics` keys of `CVAEMetrics`); none drawn without them.
      history: `RunSummary.history`; spread and ensemble-mean RMSE over epochs when its
        records hold `val_spread` and `val_ensemble_mean_rmse`.
      threshold: the exceedance threshold of the reliability diagram (mm/day).
    """
    drawn: dict[str, Figure] = {}
    if "rank_histogram" in figures_in:
        drawn["rank_histogram"] = figures.rank_histogram(
            np.asarray(figures_in["rank_histogram"]), title="test: rank of the truth, all pixels"
        )
        drawn["reliability"] = figures.reliability_diagram(
            np.asarray(figures_in["reliability_observed"]),
            np.asarray(figures_in["reliability_counts"]),
            title=f"test: reliability of exceeding {threshold:.4g} {panel.RAIN_UNITS}",
        )
    if history and {"val_spread", "val_ensemble_mean_rmse"} <= set(history[0]):
        drawn["spread_skill"] = figures.epoch_curves(
            history,
            {"member spread": "val_spread", "ensemble-mean RMSE": "val_ensemble_mean_rmse"},
            ylabel=f"{panel.RAIN_UNITS}",
            title="validation spread vs skill (equal when calibrated)",
        )
    return drawn


def run_figures(config: ConfigDict, splits, summary: RunSummary, outputs, batch) -> dict:
    """End-of-run figures: the ensemble's (`ensemble_figures`) when the test metrics hold them."""
    del splits, outputs, batch
    return ensemble_figures(summary.test, summary.history, extreme_threshold(config))
