"""Which raw-image pixels each image token sees.

MMGuard picks "perturbation tokens" as the image tokens whose pixel region
carries the most perturbation; every LVLM adapter therefore reports, for each
image token in sequence order, a box (y0, x0, y1, x1) in raw-image pixel units.
This module holds the box arithmetic: token grids over a processed image
(:func:`grid_regions`, :func:`grid_cells`), the map back to raw pixels
(:func:`to_raw`), clipping (:func:`safe_boxes`), unions (:func:`union_box`)
and the mean of a map over each box (:func:`region_means`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["grid_regions", "region_means", "grid_cells", "to_raw", "safe_boxes", "union_box"]


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


def safe_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip (T, 4) boxes (y0, x0, y1, x1) to the raw image; a box left empty (it lay in padding)
    becomes a one-pixel strip at the nearest image edge, so every token sees some pixels."""
    b = boxes.double().clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, height)
    b[:, 1::2] = b[:, 1::2].clamp(0, width)
    for lo, hi, size in ((0, 2, height), (1, 3, width)):
        empty = b[:, hi] <= b[:, lo]
        if empty.any():
            start = b[empty, lo].clamp(max=size - 1)
            b[empty, lo] = start
            b[empty, hi] = (start + 1).clamp(max=size)
    return b.float()


def grid_cells(rows: int, cols: int, cell: Tuple[float, float],
               origin: Tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Row-major boxes (y0, x0, y1, x1) of a ``rows`` x ``cols`` grid of ``cell``-sized cells at ``origin``
    (processed-pixel units, float64 (rows * cols, 4))."""
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    y0, x0 = origin[0] + r * cell[0], origin[1] + c * cell[1]
    return torch.stack([y0, x0, y0 + cell[0], x0 + cell[1]], dim=1)


def to_raw(boxes: torch.Tensor, scale: Tuple[float, float], offset: Tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Map boxes in a processed frame to raw pixels: raw = (p - offset) * scale, per axis (y, x)."""
    out = boxes.clone()
    out[:, 0::2] = (out[:, 0::2] - offset[0]) * scale[0]
    out[:, 1::2] = (out[:, 1::2] - offset[1]) * scale[1]
    return out


def union_box(boxes: torch.Tensor) -> Optional[torch.Tensor]:
    """Smallest box (4,) containing every box of (T, 4)."""
    if boxes.numel() == 0:
        return None
    return torch.stack([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
