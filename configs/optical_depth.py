"""Optical-depth regression on embedded frame sequences (seeds 000 and 001).

The default is seed 001's "Phase 1" setup: MSE plus the variance-preserving
penalty (weight 0.5), early stopping on validation R², head init std 0.5,
3 frames, no overweighting, and the collapse guard on.

    python -m jaxguard.train --cfg configs/optical_depth.py

Expected on 2 CPU cores: about 1-1.5 minutes of training; test R² 0.68-0.79 against an
oracle R² of 0.77-0.86 (86-93% of it) and std ratio 0.87-0.96 over seeds 0-2.

Variants (`--cfg configs/optical_depth.py:NAME`) reproduce seed 000's runs:
  run1  7 frames, head init std 0.5, overweight 1.5, MAE, early stopping on val loss
        (its SSL pretraining was broken; here the pretraining stage is on and works)
  run2  as run1 without pretraining and with head init std 0.01, bias 0
  run3  as run2 with head init std 0.1 (the seed's collapse, std ratio 3.4%; on this
        data it does not collapse: test R² 0.755, std ratio 0.91)
  collapse        run3 on weak-signal data (`data.signal="faint"`: 62% of targets at a haze
                  mode the frames do not predict, oracle R² ~0.33), 1000 train sequences,
                  15 epochs, ~30-60 s. MAE drifts to the mode from epoch 0 (the onset): val
                  std ratio < 0.4 at every epoch (seed 0: 0.35 -> 0.10-0.30; seed 1: 0.25 ->
                  0.14), pred std 0.04-0.12 against a target std ~0.36, while val loss creeps
                  down (0.240 -> 0.223; 0.234 -> 0.222) and val Pearson stays ~0.5. Test std
                  ratio 0.23 / 0.18, test R² 0.17 / 0.14 (seeds 0 / 1). The collapse guard
                  warns from epoch 2 on but never stops (std ratio stays above stop_below 0.1).
  collapse_fixed  the default (seed 001's fixes) on the same data: test std ratio 0.59 /
                  0.94, test R² 0.28 / -0.03 (seeds 0 / 1). The spread comes back, but with
                  the variance penalty forcing pred std ~ target std, R² ~ 2r - 1 for a
                  correlation r ~0.5: on data this weak the fix does not buy R² reliably.
  small a seconds-long run for tests and smoke checks
"""

from ml_collections import config_dict

from jaxguard.configs import base


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    config = base.get_config()
    config.task = "optical_depth"
    config.seed = 0

    # Data: the project's own generator (jaxguard/tasks/optical_depth/data.py) or user sequences.
    config.data = config_dict.ConfigDict()
    # "": the generator; else a .npz file or .zarr store with frames [N, T, H, W] and targets [N]
    # (docs/optical_depth.md); T must equal data.frames. The generator's keys below are then unused.
    config.data.source = ""
    config.data.val_fraction = 0.15  # User data: share of sequences in val (before the test block).
    config.data.test_fraction = 0.15  # User data: share of sequences in test (the last ones).
    config.data.num_train = 2000
    config.data.num_val = 400
    config.data.num_test = 144  # As in the seed's test split.
    config.data.frames = 3
    config.data.image_size = 16
    config.data.noise = 0.3  # Pixel noise std per frame.
    config.data.signal = "clear"  # clear | faint: how much of the target the frames reveal.

    # Model: per-frame conv encoder, multi-scale temporal attention, regression head.
    config.model = config_dict.ConfigDict()
    config.model.features = 32
    config.model.conv_features = (16, 32)
    config.model.attention_scales = (1, 2, 3)
    config.model.num_heads = 2
    config.model.dropout = 0.1
    config.model.head_init_std = 0.5
    config.model.head_bias_init = config_dict.placeholder(float)  # None: training-target mean.
    config.model.pretrain = config_dict.ConfigDict()
    config.model.pretrain.epochs = 0  # Self-supervised frame reconstruction before training.
    config.model.pretrain.patience = 3
    config.model.pretrain.lr = 1e-3

    # Loss: base error + collapse remedies; a weight of 0 leaves a term out.
    config.loss = config_dict.ConfigDict()
    config.loss.base = "mse"  # mse | mae
    config.loss.base_weight = 1.0
    config.loss.variance_weight = 0.5  # (1 - var(pred)/var(target))^2
    config.loss.r2_weight = 0.0
    config.loss.std_gap_weight = 0.0
    config.loss.diversity_weight = 0.0
    config.loss.overweight_factor = 1.0  # Weight of examples with target > overweight_threshold.
    config.loss.overweight_threshold = 1.2

    # Optimizer.
    config.optim.optimizer = "adamw"
    config.optim.lr = 2e-3
    config.optim.weight_decay = 1e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_epochs = 1.0
    config.optim.final_lr_ratio = 0.05
    config.optim.clip_norm = 1.0

    # Training and evaluation.
    config.train.epochs = 20
    config.train.batch_size = 32
    config.eval.batch_size = 200

    # Guards: R²-based early stopping and the collapse emergency stop.
    config.guard.early_stopping.monitor = "r2"
    config.guard.early_stopping.mode = "max"
    config.guard.early_stopping.patience = 6
    config.guard.early_stopping.start_epoch = 4  # Val R² swings by ~0.1 in the first epochs.
    config.guard.collapse.enabled = True
    config.guard.collapse.metric = "std_ratio"
    config.guard.collapse.warn_below = 0.4
    config.guard.collapse.stop_below = 0.1
    config.guard.collapse.patience = 3
    config.guard.collapse.start_epoch = 2
    # R² is what the run is for: warn when a val-loss monitor (the run variants) improves
    # while R² falls behind its best. Off while R² is itself the monitor.
    config.guard.disagreement.quality = ("r2:max",)

    config.log.every_steps = 20
    config.log.diagnostics_every_steps = 100

    if arg is None:
        return config
    if arg in ("run1", "run2", "run3", "collapse"):
        config.data.frames = 7
        config.model.attention_scales = (1, 3, 7)
        config.loss.base = "mae"
        config.loss.variance_weight = 0.0
        config.loss.overweight_factor = 1.5
        config.guard.early_stopping.monitor = "loss"
        config.guard.early_stopping.mode = "min"
        config.guard.early_stopping.patience = 10  # The seed stopped 10 epochs after the best.
        config.train.epochs = 30
        if arg == "run1":
            config.model.pretrain.epochs = 5
        else:
            config.model.head_init_std = 0.01 if arg == "run2" else 0.1
            config.model.head_bias_init = 0.0
        if arg == "collapse":  # run3 on the weak-signal data.
            _faint(config)
    elif arg == "collapse_fixed":
        _faint(config)
        # Seed 001's fixes with a lighter variance term: at 0.5 it outweighs the MSE on this
        # weak signal and pins pred std to target std (test R² 0.28 / -0.03, val R² swinging
        # by 0.4 between epochs); MSE alone sits at std ratio ~0.4, the collapse guard's line.
        config.loss.variance_weight = 0.1
    elif arg == "small":
        config.data.num_train = 256
        config.data.num_val = 64
        config.data.num_test = 48
        config.data.image_size = 8
        config.model.features = 8
        config.model.conv_features = (4,)
        config.model.attention_scales = (1, 3)
        config.optim.lr = 1e-2
        config.train.epochs = 4
        config.guard.early_stopping.start_epoch = 0
        config.train.batch_size = 16
        config.eval.batch_size = 32
        config.log.every_steps = 4
        config.log.diagnostics_every_steps = 8
    else:
        raise ValueError(
            f"unknown variant {arg!r}; choose run1, run2, run3, collapse, collapse_fixed or small"
        )
    return config


def _faint(config: config_dict.ConfigDict) -> None:
    """The weak-signal data of `collapse` and `collapse_fixed`, sized for a ~30 s run."""
    config.data.signal = "faint"
    config.data.num_train = 1000
    config.train.epochs = 15
