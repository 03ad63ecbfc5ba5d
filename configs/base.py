"""The schema every jaxguard run shares: one key per setting, with its default.

Task configs start from `get_config()` here, fill `data`, `model` and `loss`
with their own keys, add their own guards' sections under `guard` (the names the task
declares in `Task.guard_names`), and change the shared defaults they need. The loader locks
the result, so a typo in a variant or an override (`--cfg.optim.lrr=3e-4`) fails
before anything is compiled, naming the key and the closest valid one.

This file is not a run by itself: it has no task.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.task = ""  # Registry name of the task, set by each task config.
    config.seed = 0  # Seeds data generation, parameter init, dropout and shuffling.
    config.workdir = ""  # Empty: runs/<task>-<timestamp>; --workdir overrides.

    # Task-specific sections, filled by the task config.
    config.data = config_dict.ConfigDict()
    config.model = config_dict.ConfigDict()
    config.loss = config_dict.ConfigDict()

    # Optimizer: an optax chain of clipping, the optimizer, and an optional plateau scaler.
    config.optim = config_dict.ConfigDict()
    config.optim.optimizer = "adamw"  # adamw | adam | sgd
    config.optim.lr = 1e-3  # Peak learning rate.
    config.optim.weight_decay = 0.0  # Decoupled weight decay (adamw only).
    config.optim.momentum = 0.9  # sgd only.
    config.optim.schedule = "constant"  # constant | cosine (after warm-up, to lr * final_lr_ratio).
    config.optim.warmup_epochs = 0.0  # Linear warm-up from 0 to lr.
    config.optim.final_lr_ratio = 0.0  # cosine only.
    config.optim.clip_norm = 0.0  # Global gradient-norm clipping; 0 disables.
    config.optim.plateau = config_dict.ConfigDict()
    config.optim.plateau.enabled = False  # optax.contrib.reduce_on_plateau on the epoch's val loss.
    config.optim.plateau.factor = 0.5
    config.optim.plateau.patience = 5  # Epochs without improvement before the lr is scaled.
    config.optim.plateau.rtol = 1e-4
    config.optim.plateau.cooldown = 0
    config.optim.plateau.min_scale = 1e-3

    # Training loop.
    config.train = config_dict.ConfigDict()
    config.train.epochs = 20
    config.train.batch_size = 32
    config.train.steps_per_epoch = 0  # 0: one pass over the training split.

    # Evaluation.
    config.eval = config_dict.ConfigDict()
    config.eval.batch_size = 256  # Every epoch is evaluated.

    # Guards: checks that stop or warn while the run is going.
    config.guard = config_dict.ConfigDict()
    stop = config.guard.early_stopping = config_dict.ConfigDict()
    stop.enabled = True
    stop.monitor = (
        "loss"  # A validation metric name or an expression of them, e.g. "loss - 2 * r2".
    )
    stop.mode = "min"  # min | max: the direction in which `monitor` improves.
    stop.patience = 10  # Evaluations without an improvement larger than min_delta.
    stop.min_delta = 0.0
    stop.start_epoch = 0  # Evaluations before this epoch never stop the run.
    stop.stopping_threshold = config_dict.placeholder(float)  # Stop once monitor is this good.
    stop.divergence_threshold = config_dict.placeholder(float)  # Stop once monitor is this bad.
    stop.check_finite = True  # Stop when monitor is NaN or infinite.

    collapse = config.guard.collapse = config_dict.ConfigDict()
    collapse.enabled = False  # Regression tasks switch it on.
    collapse.metric = "std_ratio"  # Validation metric watched: std_ratio or pred_std.
    collapse.warn_below = 0.5
    collapse.stop_below = 0.1
    collapse.patience = 3  # Consecutive evaluations below stop_below before the run stops.
    collapse.start_epoch = 1

    spread = config.guard.ensemble_spread = config_dict.ConfigDict()
    spread.enabled = False  # Generative tasks (cvae) switch it on; the task draws the members.
    spread.members = 8  # Members drawn per validation example.
    spread.metric = "spread_skill"  # sqrt((M+1)/M) * member spread / ensemble-mean RMSE (~1).
    spread.warn_below = 0.5
    spread.stop_below = 0.3
    spread.patience = 2  # Consecutive evaluations below stop_below before the run stops.
    spread.start_epoch = 1

    # Which epoch's weights are kept as checkpoints/best and tested at the end.
    best = config.guard.best = config_dict.ConfigDict()
    best.enabled = True
    # None: follow guard.early_stopping (its monitor, mode, min_delta and start_epoch; no best
    # checkpoint when early stopping is off, so the last weights are tested). Set a metric name
    # or expression to choose the best checkpoint by it, with the two keys below.
    best.monitor = config_dict.placeholder(str)
    best.mode = "min"  # min | max; used with best.monitor.
    best.start_epoch = 0  # Used with best.monitor: earlier evaluations are never the best.

    nonfinite = config.guard.nonfinite = config_dict.ConfigDict()
    nonfinite.max_consecutive = 5  # Skipped non-finite updates in a row before the run stops.

    # Guards that compare signals with each other (docs/guards.md); all only warn.
    volatility = config.guard.volatility = config_dict.ConfigDict()
    volatility.enabled = True
    # Watched beside the early-stopping monitor, as "name:min" or "name:max".
    volatility.metrics = ()
    volatility.max_jump = 1.0  # Worsening from one evaluation to the next, relative (1: doubled).
    # Evaluations before it only record values; None: early stopping's start_epoch, and at
    # least 2 (the first epochs move a lot, and early stopping does not count them).
    volatility.start_epoch = config_dict.placeholder(int)

    disagreement = config.guard.disagreement = config_dict.ConfigDict()
    disagreement.enabled = True
    # The metrics the run is for, "name:min" / "name:max"; empty: the guard is off. Warns when
    # the early-stopping monitor keeps improving while one of them falls behind its best.
    disagreement.quality = ()
    disagreement.tolerance = 0.05  # Relative slack on each quality metric's best.
    disagreement.patience = 3  # Monitor improvements with the quality metric behind, in a row.
    disagreement.start_epoch = 0

    overfitting = config.guard.overfitting = config_dict.ConfigDict()
    overfitting.enabled = True
    overfitting.metric = "loss"  # Validation loss, compared with `train_loss`.
    overfitting.rise = 0.2  # Above its best by this share, while train loss falls below its own
    overfitting.train_drop = 0.05  # there by at least this share.
    # 2 (was 3, with train_drop 0.1): the zoo's overfitting row warned 6 evaluations after onset
    # on seed 1, now 3; replayed on the logs of 50 healthy zoo runs, still silent.
    overfitting.patience = 2
    # Evaluations before it are ignored (no best is recorded from them); None: early stopping's
    # start_epoch, and at least 1 (the val loss of the first epochs swings; seed 000's too).
    overfitting.start_epoch = config_dict.placeholder(int)

    loss_terms = config.guard.loss_terms = config_dict.ConfigDict()
    loss_terms.enabled = True
    # Effective weight (weighted / reference) against the configured one, for terms that
    # declare a reference; warns beyond this relative departure.
    loss_terms.weight_tolerance = 0.5
    loss_terms.min_share = config_dict.ConfigDict()  # Term -> floor on its share of the gradient.
    loss_terms.patience = 3  # Logged steps (diagnostics checks for shares) in a row.

    warmup = config.guard.warmup = config_dict.ConfigDict()
    warmup.enabled = True  # Warns when the best checkpoint sits inside an unfinished warm-up.

    # Logging.
    config.log = config_dict.ConfigDict()
    config.log.every_steps = 20  # Training scalars (loss terms, gradient and update norms, lr).
    config.log.diagnostics_every_steps = 100  # Val-batch pred std / R2, histograms, weight norms.
    # Each loss term's share of the gradient at every diagnostics step (one backward pass per
    # term; guard.loss_terms.min_share reads it).
    config.log.term_gradients = True
    config.log.histogram_bins = 20
    # The run's TensorBoard event file: scalars, histograms and images at every evaluation and
    # diagnostics step. False: no event file and no per-evaluation histograms or images
    # (log.csv, guard events, report and figures/*.png are written all the same).
    config.log.tensorboard = True
    config.log.progress = True  # Console progress bar.

    # Checkpoints (orbax), saved every epoch: the latest for --resume and the best (guard.best).
    config.ckpt = config_dict.ConfigDict()
    config.ckpt.keep_latest = 2
    return config
