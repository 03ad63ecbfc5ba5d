"""Guards: checks that catch silent training failures while a run is going.

Every guard is a `Guard` (`jaxguard.guards.base`): a `name` that is also its config section
`guard.<name>`, hooks `on_step` and `on_evaluation` that return a `GuardEvent` or None, and a
state saved with each checkpoint. The harness holds them in a `GuardCollection`. Built in:

* `EarlyStopping` (`guard.early_stopping`): stops on a plateau of a monitored metric or
  expression (``"r2"``, ``"loss - 2 * r2"``), on a target or divergence threshold, or on a NaN.
* `CollapseGuard` (`guard.collapse`): warns, then stops, when the predictions lose their spread
  (``std_ratio = pred_std / target_std`` near 0), the failure a flat validation loss hides.
* `EnsembleSpreadGuard` (`guard.ensemble_spread`): the same for the spread of a generative
  model's ensemble (spread/skill ratio near 0: members near-identical while the truth is not).
* `NonFiniteGuard` (`guard.nonfinite`): warns when the train step starts skipping non-finite
  updates and stops after too many in a row.
* `VolatilityGuard` (`guard.volatility`): the monitor (or another watched metric) jumps the
  wrong way between evaluations, so early stopping follows spikes.
* `DisagreementGuard` (`guard.disagreement`): the monitor keeps improving while a declared
  quality metric falls behind its best (val loss vs R^2, field vs tail MAE).
* `OverfittingGuard` (`guard.overfitting`): validation loss climbs away from its best while the
  training loss keeps falling.
* `LossTermGuard` (`guard.loss_terms`): a loss term's effective weight departs from its
  configured one, or its share of the gradient stays below a floor.
* `WarmupGuard` (`guard.warmup`): the best checkpoint sits inside a loss-weight warm-up that
  early stopping can end the run before.

docs/guards.md has one section per guard: what it measures, the seed failure it catches, its
settings and the failure zoo's figure (`python -m benchmarks.zoo`).

`BestCheckpoint` (`guard.best`) picks the best checkpoint; it reports no events.
`collapse_diagnostics` gives the figures dumped when the collapse guard fires, and
`warmup_vs_early_stopping_warning` flags configs in which early stopping can end a run before a
warm-up has finished. Tasks add their own guards (see `jaxguard.tasks.contract.Task`).
"""

from jaxguard.guards.base import Diagnostics as Diagnostics
from jaxguard.guards.base import Evaluation as Evaluation
from jaxguard.guards.base import Guard as Guard
from jaxguard.guards.base import GuardEvent as GuardEvent
from jaxguard.guards.base import StepInfo as StepInfo
from jaxguard.guards.base import check_advance as check_advance
from jaxguard.guards.base import check_count as check_count
from jaxguard.guards.base import check_state_matches as check_state_matches
from jaxguard.guards.base import format_figure as format_figure
from jaxguard.guards.base import require_metrics as require_metrics
from jaxguard.guards.best import BestCheckpoint as BestCheckpoint
from jaxguard.guards.collapse import CollapseGuard as CollapseGuard
from jaxguard.guards.collapse import collapse_diagnostics as collapse_diagnostics
from jaxguard.guards.collection import GuardCollection as GuardCollection
from jaxguard.guards.disagreement import DisagreementGuard as DisagreementGuard
from jaxguard.guards.early_stopping import EarlyStopping as EarlyStopping
from jaxguard.guards.early_stopping import (
    warmup_vs_early_stopping_warning as warmup_vs_early_stopping_warning,
)
from jaxguard.guards.ensemble import EnsembleSpreadGuard as EnsembleSpreadGuard
from jaxguard.guards.loss_terms import LossTermGuard as LossTermGuard
from jaxguard.guards.monitor import MonitorExpression as MonitorExpression
from jaxguard.guards.nonfinite import NonFiniteGuard as NonFiniteGuard
from jaxguard.guards.overfitting import OverfittingGuard as OverfittingGuard
from jaxguard.guards.volatility import VolatilityGuard as VolatilityGuard
from jaxguard.guards.warmup import Ramp as Ramp
from jaxguard.guards.warmup import WarmupGuard as WarmupGuard
from jaxguard.guards.warmup import weight_ramps as weight_ramps
from jaxguard.guards.watched import parse_watched as parse_watched
