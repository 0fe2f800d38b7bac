"""Which raw-image pixels each image token sees.

MMGuard picks "perturbation tokens" as the image tokens whose pixel region
carries the most perturbation; every LVLM adapter therefore reports, for each
image token in sequence order, a box (y0, x0, y1, x1) in raw-image pixel units.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["grid_regions", "region_means"]


def grid_regions(rows: int, cols: int, cell: Tuple[float, float], geometry: Tuple[float, float, float, float],
                 height: int, width: int, origin: Tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Boxes of a row-major token grid over a processed image, mapped back to the raw image.

    Args:
        rows, cols: token grid.
        cell: (cell_h, cell_w) processed pixels per token.
        geometry: (scale_y, scale_x, offset_y, offset_x): processed pixel (r, c)
            sees raw ((r + offset_y) * scale_y, (c + offset_x) * scale_x).
        height, width: raw image size (boxes are clipped to it).
        origin: (y, x) of the grid's top-left corner in processed pixels (tiles).

    Returns:
        float (rows * cols, 4) boxes (y0, x0, y1, x1).
    """
    sy, sx, oy, ox = geometry
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    y0 = (origin[0] + r * cell[0] + oy) * sy
    y1 = (origin[0] + (r + 1) * cell[0] + oy) * sy
    x0 = (origin[1] + c * cell[1] + ox) * sx
    x1 = (origin[1] + (c + 1) * cell[1] + ox) * sx
    boxes = torch.stack([y0.clamp(0, height), x0.clamp(0, width), y1.clamp(0, height), x1.clamp(0, width)], dim=1)
    return boxes.float()


def region_means(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (N, H, W) over each box of ``regions`` (T, 4), shape (N, T).

    Boxes are widened to whole pixels (floor / ceil) and to at least one pixel;
    computed with an integral image, so cost does not grow with box size.
    """
    if values.ndim != 3:
        raise ValueError(f"values must be (N, H, W), got {tuple(values.shape)}")
    n, h, w = values.shape
    integral = torch.zeros((n, h + 1, w + 1), dtype=torch.float64, device=values.device)
    integral[:, 1:, 1:] = values.double().cumsum(1).cumsum(2)
    b = regions.to(values.device).double()
    y0 = b[:, 0].floor().long().clamp(0, h - 1)
    x0 = b[:, 1].floor().long().clamp(0, w - 1)
    y1 = torch.maximum(b[:, 2].ceil().long().clamp(1, h), y0 + 1)
    x1 = torch.maximum(b[:, 3].ceil().long().clamp(1, w), x0 + 1)
    total = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    return (total / ((y1 - y0) * (x1 - x0)).double()).to(values.dtype)
