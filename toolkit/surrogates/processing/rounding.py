"""Straight-through roundings: the ``uint8`` rounding of a real image processor in the forward pass,
the identity in the backward pass, so gradients reach the raw pixels through every rounded step."""
from __future__ import annotations

import torch

__all__ = ["round_ste", "round_half_up_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` (nearest integer, half to even) forward, identity gradient backward; any shape."""
    return x + (x.round() - x).detach()


def round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half up (``floor(x + 0.5)``, as fixed-point kernels do) forward, identity gradient backward; any shape."""
    return x + ((x + 0.5).floor() - x).detach()
