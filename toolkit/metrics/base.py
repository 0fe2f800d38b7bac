"""The :class:`Metric` base class and the ``METRICS`` registry."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..registry import Registry

__all__ = ["Metric", "METRICS"]

METRICS: Registry = Registry("metric")


class Metric(ABC):
    """A scalar measurement.

    ``kind`` says what it compares: ``"answers"`` metrics take (predictions,
    reference samples); ``"images"`` metrics take (clean samples, protected
    samples) and average over pairs. ``higher_is_better`` orients reports.
    """

    kind: ClassVar[str] = "answers"
    higher_is_better: ClassVar[bool] = True
    name: ClassVar[str]

    @abstractmethod
    def __call__(self, a: Any, b: Any) -> float:
        """Compute the metric value."""
