"""benchmarks.guard_overhead's "off" setting: every guard off, checkpoints chosen as with them."""

from benchmarks.guard_overhead import all_off, guards_off
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


def test_all_off_also_turns_off_diagnostics_and_tensorboard_for_the_whole_run():
    config = config_lib.load_config("pointer")
    off = config_lib.load_config("pointer", all_off(config))
    assert not off.log.tensorboard and not off.log.term_gradients
    steps_in_run = off.train.epochs * off.data.num_train // off.train.batch_size
    assert off.log.diagnostics_every_steps > steps_in_run
    assert GuardCollection.from_config(off.guard, loss_weights={}).names == ("nonfinite",)
