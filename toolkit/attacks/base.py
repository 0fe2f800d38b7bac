"""Countermeasure base classes (the attacker's side) and the ``COUNTERMEASURES`` registry.

A data-side :class:`Transform` maps a (protected) training set to a new
dataset; it is applied to the TRAINING split only. The pipeline never hands it
the clean test split. Transforms compose: ``COUNTERMEASURES.create("jpeg+punctuation")``
is a :class:`Chain` applying them left to right.
"""
from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar, Dict, Sequence

import numpy as np

from ..data import VQADataset
from ..registry import Config, Registry, make_config

__all__ = ["Transform", "Chain", "COUNTERMEASURES"]


class _CountermeasureRegistry(Registry):
    """Registry whose ``create`` also builds chains from ``"a+b+c"`` names.

    For a chain, keyword arguments are per-member config dicts keyed by member
    name: ``create("jpeg+resize", jpeg={"quality": 30}, resize={"scale": 0.5})``.
    """

    def create(self, name: str, **config: Any):  # type: ignore[override]
        if "+" not in name:
            return super().create(name, **config)
        parts = [p.strip() for p in name.split("+")]
        unknown = sorted(set(config) - set(parts))
        if unknown:
            raise TypeError(f"chain {name!r}: config keys must be member names {parts}, got {unknown}")
        for key, value in config.items():
            if not isinstance(value, dict):
                raise TypeError(f"chain {name!r}: config for {key!r} must be a dict, got {type(value).__name__}")
        return Chain([super(_CountermeasureRegistry, self).create(p, **config.get(p, {})) for p in parts])


COUNTERMEASURES: Registry = _CountermeasureRegistry("countermeasure")


class Transform(ABC):
    """A data-side countermeasure: dataset -> dataset, sample by sample.

    Subclasses declare a frozen ``Config`` dataclass and override
    :meth:`transform_image` (uint8 (H, W, 3) -> uint8 (H, W, 3)) and/or
    :meth:`transform_question`. A config with a ``seed`` field gets a seeded
    numpy ``Generator`` per call, shared by the samples in order. Inputs are
    never mutated.
    """

    Config: ClassVar[type] = Config
    name: ClassVar[str]
    #: True when the transform must be fitted (on the attacker's own data) before use
    needs_fit: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, f"countermeasure {getattr(self, 'name', type(self).__name__)!r}",
                                  config)

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the transformed image (default: unchanged)."""
        return image

    def transform_question(self, question: str) -> str:
        """Return the transformed question text (default: unchanged)."""
        return question

    def __call__(self, dataset: VQADataset) -> VQADataset:
        """Apply to every sample; returns a new dataset named ``<name>+<transform>``."""
        rng = np.random.default_rng(getattr(self.config, "seed", 0))
        out = []
        for s in dataset:
            image = self.transform_image(s.image, rng)
            if image.shape != s.image.shape or image.dtype != np.uint8:
                raise RuntimeError(f"{self.name}: must return uint8 {s.image.shape}, got {image.dtype} {image.shape}")
            out.append(s.with_(image=image, question=self.transform_question(s.question)))
        return dataset.replace_samples(out, f"{dataset.name}+{self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class Chain(Transform):
    """Countermeasures applied left to right; itself a countermeasure."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        if not transforms:
            raise ValueError("a chain needs at least one countermeasure")
        self.transforms = list(transforms)
        self.name = "+".join(t.name for t in self.transforms)  # type: ignore[misc]
        self.config = Config()

    def __call__(self, dataset: VQADataset) -> VQADataset:
        for t in self.transforms:
            dataset = t(dataset)
        return dataset

    def describe(self) -> Dict[str, Any]:
        """Member names and configs (for result rows)."""
        return {t.name: t.config.to_dict() for t in self.transforms}
