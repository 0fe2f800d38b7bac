"""Countermeasure base classes (the attacker's side) and the ``COUNTERMEASURES`` registry.

A data-side :class:`Transform` maps a (protected) training set to a new
dataset; it is applied to the TRAINING split only. The pipeline never hands it
the clean test split.
"""
from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar, Optional

import numpy as np

from ..data import VQADataset, VQASample
from ..registry import Config, Registry, make_config

__all__ = ["Transform", "COUNTERMEASURES"]

COUNTERMEASURES: Registry = Registry("countermeasure")


class Transform(ABC):
    """A data-side countermeasure: dataset -> dataset, sample by sample.

    Subclasses declare a frozen ``Config`` dataclass and override
    :meth:`transform_image` (uint8 (H, W, 3) -> uint8 (H, W, 3)) and/or
    :meth:`transform_question`. Inputs are never mutated.
    """

    Config: ClassVar[type] = Config
    name: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, type(self).__name__, config)

    def transform_image(self, image: np.ndarray) -> np.ndarray:
        """Return the transformed image (default: unchanged)."""
        return image

    def transform_question(self, question: str) -> str:
        """Return the transformed question text (default: unchanged)."""
        return question

    def __call__(self, dataset: VQADataset) -> VQADataset:
        """Apply to every sample; returns a new dataset named ``<name>+<transform>``."""
        out = []
        for s in dataset:
            image = self.transform_image(s.image)
            if image.shape != s.image.shape or image.dtype != np.uint8:
                raise RuntimeError(f"{self.name}: must return uint8 {s.image.shape}, got {image.dtype} {image.shape}")
            out.append(s.with_(image=image, question=self.transform_question(s.question)))
        return dataset.replace_samples(out, f"{dataset.name}+{self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
