"""The ensemble-spread guard: a generative model whose members agree while the truth does not."""

from __future__ import annotations

from jaxguard.guards.base import Diagnostics, GuardEvent
from jaxguard.guards.collapse import CollapseGuard


class EnsembleSpreadGuard(CollapseGuard):
    """Warns, then stops, when an ensemble is far narrower than its error (ensemble collapse).

    A conditional generative model (the cVAE) can reach a good mean error while its members are
    near-identical: the decoder ignores the latent draw. Its loss, its KL and its active latent
    units then all look healthy; the spread/skill ratio does not. The guard watches
    ``spread_skill = sqrt((M + 1) / M) * spread / RMSE(ensemble mean)`` (about 1 for a calibrated
    ensemble, seed 000's std ratio one level up) in the validation metrics, which the task
    computes from `members` draws per example (`jaxguard.metrics.EnsembleMetrics`), with
    `CollapseGuard`'s rules: below `stop_below` for `patience` evaluations in a row it stops the
    run with an ``ensemble collapse:`` message; below `warn_below` it warns; back above it, one
    "info" event. Messages quote the member spread, the ensemble-mean RMSE, the shares of truths
    below and above every member (the rank histogram's end bins; 1/(M+1) each when calibrated)
    and the fair CRPS, when the metrics hold them.

    Attributes:
      members: The ensemble size the task draws per validation example (`guard.ensemble_spread
        .members`); read by the task, recorded here for the messages and the saved state.
    """

    name = "ensemble_spread"

    def on_diagnostics(self, diagnostics: Diagnostics) -> GuardEvent | None:
        """Evaluations only: one batch's spread/skill, from a few members, is too noisy to stop
        a run on (the collapse guard's in-epoch check is for point predictions)."""
        del diagnostics
        return None

    spread_text = "ensemble spread"
    stop_text = "ensemble collapse"
    consequence = "the members are near-identical and the truth often falls outside all of them"
    config_keys = (*CollapseGuard.config_keys, "members")  # From `config.guard.ensemble_spread`.
    figures = (
        ("spread", "member spread"),
        ("ensemble_mean_rmse", "ensemble-mean RMSE"),
        ("rank_low", "truth below every member"),
        ("rank_high", "above every member"),
        ("crps", "fair CRPS"),
    )

    def __init__(
        self,
        metric: str = "spread_skill",
        warn_below: float = 0.5,
        stop_below: float = 0.3,
        patience: int = 2,
        start_epoch: int = 1,
        members: int = 8,
    ):
        super().__init__(metric, warn_below, stop_below, patience, start_epoch)
        if members < 2:
            raise ValueError(f"EnsembleSpreadGuard: `members` must be >= 2, got {members}.")
        self.members = int(members)
