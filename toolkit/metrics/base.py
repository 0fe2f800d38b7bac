"""The :class:`Metric` base class and the ``METRICS`` registry."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator, Sequence, Tuple

from ..registry import Config, Registry, make_config

__all__ = ["Metric", "METRICS", "DEFAULT_METRICS", "aligned_samples"]

METRICS: Registry = Registry("metric")
#: what a matrix spec measures when it lists no ``metrics``
DEFAULT_METRICS = ("accuracy", "psnr", "ssim", "linf", "trigger_length")


class Metric(ABC):
    """A scalar measurement, registered in ``METRICS`` under the column name it fills in result rows.

    ``kind`` says what it consumes: ``"answers"`` metrics take (predictions,
    reference samples) and are computed after fine-tuning; ``"images"`` and
    ``"text"`` metrics take (clean samples, released samples), aligned by id,
    and are computed once per protection (stealth). ``higher_is_better``
    orients reports. A matrix spec's ``metrics:`` names any of them, by name or
    as ``{name: NAME, config: {...}, model: MODEL_KEY}``.

    Options: a metric may declare a frozen ``Config`` dataclass; keyword
    arguments build it (``self.config``), unknown keys raise ``TypeError``.
    ``needs_model`` metrics score text with a language model the user owns:
    the runner passes the loaded model as ``scorer=`` (spec key ``model:``).
    ``path_keys`` name the config keys that are file paths (a spec file's
    relative paths are resolved against its folder).
    """

    kind: ClassVar[str] = "answers"
    higher_is_better: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    path_keys: ClassVar[Tuple[str, ...]] = ()
    Config: ClassVar[type] = Config
    name: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, f"metric {getattr(self, 'name', type(self).__name__)!r}", config)

    def applies(self, clean: Any, released: Any) -> bool:
        """Whether the metric means anything for this pair of sets (the row gets None otherwise)."""
        return True

    @abstractmethod
    def __call__(self, a: Any, b: Any) -> float:
        """Compute the metric value."""


def aligned_samples(clean: Sequence[Any], released: Sequence[Any]) -> Iterator[Tuple[Any, Any]]:
    """Yield (clean, released) sample pairs of two non-empty sets of equal length, checking their ids match."""
    if len(clean) != len(released) or not clean:
        raise ValueError(f"need two aligned non-empty sets, got {len(clean)} and {len(released)}")
    for a, b in zip(clean, released):
        if a.id != b.id:
            raise ValueError(f"sample ids differ: {a.id!r} vs {b.id!r}")
        yield a, b
