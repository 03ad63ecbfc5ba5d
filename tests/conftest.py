"""Shared test setup: float32 JAX on the CPU, deterministic NumPy generators."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)
