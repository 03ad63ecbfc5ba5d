"""Streaming metrics: mergeable pytrees of exact sufficient statistics.

Every metric follows one protocol: ``m = Cls.empty(**config)``, ``m = m.update(...)``
(pure, jittable), ``m = m.merge(other)`` (exact, associative) and ``m.compute()`` (a dict
of host-side Python floats). NaN/Inf inputs are excluded and counted under `nonfinite`.
"""

from jaxguard.metrics._extremes import ExtremeMetrics
from jaxguard.metrics._histogram import Histogram
from jaxguard.metrics._moments import (
    COUNT_DTYPE,
    STATE_DTYPE,
    Moments,
    merge_stacked,
)
from jaxguard.metrics._pointing import DONE_THRESHOLD, PointingMetrics
from jaxguard.metrics._probabilistic import EnsembleMetrics
from jaxguard.metrics._regression import RegressionMetrics
from jaxguard.metrics._segmentation import SegmentationMetrics

__all__ = [
    "COUNT_DTYPE",
    "DONE_THRESHOLD",
    "STATE_DTYPE",
    "EnsembleMetrics",
    "ExtremeMetrics",
    "Histogram",
    "Moments",
    "PointingMetrics",
    "RegressionMetrics",
    "SegmentationMetrics",
    "merge_stacked",
]
