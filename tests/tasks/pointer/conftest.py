"""Fixtures shared by the pointer tests: the `small` variant's config and its splits.

Test modules cannot import each other, so the config loader is a fixture too.
"""

import os

import pytest

from jaxguard import config as config_lib
from jaxguard.tasks.pointer import TASK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs", "pointer.py:small")


@pytest.fixture(scope="session")
def load_small():
    """`load_small(*overrides)`: the small variant with `KEY=VALUE` overrides, checked."""

    def load(*overrides):
        return config_lib.load_config(SMALL, list(overrides))

    return load


@pytest.fixture(scope="session")
def small(load_small):
    """`(config, splits)` of the small variant."""
    config = load_small()
    return config, TASK.make_splits(config)
