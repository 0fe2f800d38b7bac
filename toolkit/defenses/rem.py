"""REM: robust error-minimising noise (Fu et al., ICLR 2022).

min_theta min_{||delta_u|| <= rho_u} max_{||delta_a|| <= rho_a} L(f(x + delta_u + delta_a), y),
rho_a < rho_u (8/255 vs 4/255). The inner maximisation makes the noise survive
adversarial training: the surrogate is trained on adversarial examples of the
protected data and the noise is optimised to stay error-minimising even after
an adversary's step. The paper's expectation over augmentations (EOT) is the
``eot`` option every min-min defense has (see :mod:`toolkit.pixel_transforms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..engine import clamp_pixels, pgd
from ..registry import check_range
from .base import DEFENSES
from .minmin import MinMinConfig, MinMinDefense

__all__ = ["REM"]


@DEFENSES.register("rem")
class REM(MinMinDefense):
    """Robust EMN (see the module docstring).

    Extra config: ``adv_eps`` (rho_a; None = eps / 2, i.e. 4/255 for eps 8/255; must be < eps),
    ``adv_steps`` (3), ``adv_step_size`` (None = rho_a / 2).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(MinMinConfig):
        adv_eps: Optional[float] = None
        adv_steps: int = 3
        adv_step_size: Optional[float] = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.adv_eps is not None:
                check_range("adv_eps", self.adv_eps, 0, self.eps, low_open=True, high_open=True)
            check_range("adv_steps", self.adv_steps, 1, 10_000)
            if self.adv_step_size is not None:
                check_range("adv_step_size", self.adv_step_size, 0, 1, low_open=True)

    def _adversarial(self, surrogates, pixels: torch.Tensor, samples) -> torch.Tensor:
        """Error-maximising delta_a (B, 3, H, W) within adv_eps for fixed ``pixels`` (input gradients only)."""
        cfg = self.config
        rho = cfg.adv_eps if cfg.adv_eps is not None else cfg.eps / 2
        px = pixels.detach()
        return pgd(lambda a: self.sample_loss(surrogates, clamp_pixels(px + a), samples).sum(),
                   torch.zeros_like(px), step_size=cfg.adv_step_size or rho / 2, steps=cfg.adv_steps,
                   project_fn=lambda a: ((px + a).clamp(0, 1) - px).clamp(-rho, rho), descend=False)

    def objective(self, run, x, d, samples, idx):
        """The min-min loss after the adversary's error-maximising step on the protected pixels."""
        protected = clamp_pixels(x + d)
        a = self._adversarial(run.surrogates, protected, samples)
        return self.sample_loss(run.surrogates, clamp_pixels(protected + a), samples).sum()

    def train_pixels(self, run, surrogate, pixels, samples):
        """The surrogate trains on adversarial examples of the protected data."""
        return (pixels + self._adversarial([surrogate], pixels, samples)).clamp(0, 1)
