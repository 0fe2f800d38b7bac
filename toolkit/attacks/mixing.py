"""Mixing: the attacker dilutes the protected training set with clean data it owns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..data import VQADataset
from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["MixClean"]


@COUNTERMEASURES.register("mix_clean")
class MixClean(Transform):
    """Replace a share ``ratio`` of the protected training samples by clean samples of the attacker's own.

    Fit first with the attacker's clean data: ``MixClean(ratio=0.2).fit(clean)``.
    The training set keeps its size; clean samples get ids prefixed ``clean:``.
    ``ratio=0`` is the identity. Seeded choice of which samples are swapped.
    """

    needs_fit = True

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        ratio: float = 0.2
        seed: int = 0

        def __post_init__(self) -> None:
            check_range("ratio", self.ratio, 0.0, 1.0)

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.clean: Optional[VQADataset] = None

    def fit_from(self, ctx) -> Dict[str, Any]:
        """Fit on the attacker's clean data of a :class:`~toolkit.attacks.fitting.FitContext`."""
        self.fit(ctx.clean_data())
        return {}

    def fit(self, clean: VQADataset) -> "MixClean":
        """Give the attacker's clean samples (must be disjoint from the test split)."""
        self.clean = clean.require_nonempty()
        return self

    def __call__(self, dataset: VQADataset) -> VQADataset:
        if self.config.ratio == 0:
            return dataset
        if self.clean is None:
            raise RuntimeError("mix_clean: call fit(clean_dataset) with the attacker's clean data first")
        rng = np.random.default_rng(self.config.seed)
        k = int(round(self.config.ratio * len(dataset)))
        if k > len(self.clean):
            raise ValueError(f"mix_clean: ratio {self.config.ratio} needs {k} clean samples, "
                             f"the attacker has {len(self.clean)}")
        drop = set(rng.choice(len(dataset), size=k, replace=False).tolist())
        add = rng.choice(len(self.clean), size=k, replace=False).tolist()
        kept = [s for i, s in enumerate(dataset) if i not in drop]
        extra = [self.clean[i].with_(id=f"clean:{self.clean[i].id}") for i in add]
        return dataset.replace_samples(kept + extra, f"{dataset.name}+{self.name}")
