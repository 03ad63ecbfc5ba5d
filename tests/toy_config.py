"""The toy task of docs/adding_a_task.md: a linear model on 4 features, a few seconds.

    PYTHONPATH=tests python -m jaxguard.train --cfg tests/toy_config.py

Expected: test R² about 0.99 after 5 epochs.
"""

from ml_collections import config_dict

from jaxguard.configs import base


def get_config():
    config = base.get_config()
    config.task = "toy_task"  # A module path: tests/toy_task.py exports TASK.
    config.optim.lr = 0.05
    config.train.epochs = 5
    config.train.batch_size = 32
    config.eval.batch_size = 64
    config.log.progress = False
    config.guard.gap = config_dict.ConfigDict()
    config.guard.gap.ratio = 3.0  # Warn when val loss > 3 x train loss.
    return config
