"""Random noise: the control every real protection must beat."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import make_generator
from ..registry import check_choice
from .base import DEFENSES, Defense, DefenseConfig, Proposal

__all__ = ["RandomNoise"]


@DEFENSES.register("random_noise")
class RandomNoise(Defense):
    """delta ~ U(-eps, eps) per pixel, fixed; ``granularity="class"`` draws one pattern per answer.

    No surrogate is used. Same seed -> same noise.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(DefenseConfig):
        granularity: str = "sample"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("granularity", self.granularity, {"sample", "class"})

    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        g = make_generator(self.config.seed)
        eps = self.config.eps
        patterns = {}
        proposals = []
        for s in dataset:
            h, w, _ = s.image.shape
            key = s.answer if self.config.granularity == "class" else s.id
            if key not in patterns or patterns[key].shape[-2:] != (h, w):
                patterns[key] = (torch.rand((3, h, w), generator=g) * 2 - 1) * eps
            x = torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0
            proposals.append((x + patterns[key]).clamp(0, 1))
        return Proposal(proposals)
