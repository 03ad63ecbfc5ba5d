"""benchmarks.guard_overhead's "off" setting: every guard off, checkpoints chosen as with them."""

from benchmarks.guard_overhead import guards_off
from jaxguard import config as config_lib
from jaxguard.guards import GuardCollection


def test_guards_off_leaves_only_the_nonfinite_guard_and_keeps_the_best_checkpoint_rule():
    config = config_lib.load_config("cvae")
    off = config_lib.load_config("cvae", guards_off(config))
    assert GuardCollection.from_config(off.guard, loss_weights={"kl": 1.0}).names == ("nonfinite",)
    assert not off.guard.active_units.enabled and not off.log.term_gradients
    stop = config.guard.early_stopping
    assert (off.guard.best.monitor, off.guard.best.mode) == (stop.monitor, stop.mode)
    assert off.guard.best.start_epoch == stop.start_epoch
