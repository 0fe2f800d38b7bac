"""TUE: transferable unlearnable examples (Ren et al., ICLR 2023).

Adds a class-wise separability term on the noise itself to the min-min loss:
loss = w_task * L_task(x + delta) + w_csd * CSD(delta, labels), with the
class-wise separability discriminant
CSD = mean over class pairs c != c' of (s_c + s_c' + 1e-5) / (||mu_c - mu_c'||_2 + 1e-5),
mu_c the mean flattened delta of class c and s_c the mean distance of class c's
deltas to mu_c (a Davies-Bouldin ratio). Minimising it makes the noise
linearly separable by class, a shortcut any model can pick up, which is what
makes it transfer. The original pairs it with a self-supervised surrogate
(w_task on the SimCLR loss); here the task loss is the surrogate's own loss
(answer NLL for an LVLM) and classes are answers or answer clusters.

CSD is computed over the classes present in each PGD batch (exact when a batch
holds every class; ``pgd_batch_size`` larger than the class count helps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import clamp_pixels
from ..registry import check_range
from .base import DEFENSES
from .minmin import MinMinConfig, MinMinDefense

__all__ = ["TUE", "class_separability"]


def class_separability(delta: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """CSD of per-sample noise ``delta`` (B, ...) with classes ``labels`` (B,); 0 with fewer than 2 classes."""
    flat = delta.flatten(1)
    classes = labels.unique()
    if len(classes) < 2:
        return flat.sum() * 0.0
    mus, spreads = [], []
    for c in classes.tolist():
        members = flat[labels == c]
        mu = members.mean(0)
        mus.append(mu)
        spreads.append((members - mu).norm(dim=1).mean())
    mu = torch.stack(mus)
    s = torch.stack(spreads)
    dist = torch.cdist(mu[None], mu[None])[0]
    ratio = (s[:, None] + s[None, :] + eps) / (dist + eps)
    off = ~torch.eye(len(classes), dtype=torch.bool, device=flat.device)
    return ratio[off].mean()


@DEFENSES.register("tue")
class TUE(MinMinDefense):
    """Min-min noise plus the class-wise separability term (see the module docstring).

    Extra config: ``task_weight`` (1.0), ``csd_weight`` (0.1). Defaults follow
    the paper where it applies (alpha = eps/10).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(MinMinConfig):
        task_weight: float = 1.0
        csd_weight: float = 0.1
        step_size: float = 0.8 / 255

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("task_weight", self.task_weight, 0, 1e6)
            check_range("csd_weight", self.csd_weight, 0, 1e6)

    def objective(self, run, x, d, samples, idx):
        """w_task * task loss + w_csd * B * CSD(d, classes of the batch)."""
        cfg = self.config
        labels = run.pert.labels[idx]
        task = self.sample_loss(run.surrogates, clamp_pixels(x + d), samples).sum()
        return cfg.task_weight * task + cfg.csd_weight * len(samples) * class_separability(d, labels.to(d.device))
