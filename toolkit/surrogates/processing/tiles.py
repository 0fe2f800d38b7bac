"""Tiling ("any-resolution") pieces: LLaVA-NeXT, InternVL, Idefics3 / SmolVLM.

These families cut one raw image into several fixed-size tiles (plus a
downscaled whole-image view) and decide the tile layout from the raw size.
The helpers here repeat the layout arithmetic of the transformers image
processors (pure Python on integers, so the layout is decided exactly as the
real processor decides it) and the uint8-faithful resize
(:func:`resize_uint8`, :func:`fixed_point_resize`) that gradients flow through.

All pixel tensors here are floats in uint8 units (0..255), shape (N, 3, H, W);
:func:`~.settings.rescale_normalize` maps them to model inputs, and the
token-region box helpers are in :mod:`.token_regions`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .torchvision import native_uint8_resize, resize_like_torchvision

__all__ = ["resize_uint8", "select_best_resolution", "fit_within", "optimal_tiled_canvas", "longest_edge_size",
           "multiple_of_tile_size", "resampling_matrix", "fixed_point_resize"]


def resize_uint8(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (N, C, H, W) floats in 0..255 to ``size`` = (height, width) as torchvision resizes a uint8 tensor.

    ``mode`` is a torch mode from :data:`~.settings.TILING_MODES`. Bicubic and
    Lanczos (the modes of these families), and bilinear where
    torchvision uses the native kernel for it (AVX2 / AVX-512 / ARM CPUs):
    torch's uint8 kernel repeated exactly (:func:`fixed_point_resize`). Other
    bilinear: float interpolation rounded once, as
    :func:`~.torchvision.resize_like_torchvision` does it.
    A no-op when the size is unchanged.
    """
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if mode == "nearest-exact":
        return F.interpolate(x, size=(h, w), mode="nearest-exact")
    if mode in _KERNELS and (mode != "bilinear" or native_uint8_resize(mode)):
        return fixed_point_resize(x, (h, w), mode)
    return resize_like_torchvision(x, (h, w), mode)


def _cubic(t: torch.Tensor) -> torch.Tensor:
    a, t = -0.5, t.abs()  # the antialiasing kernels use PIL's a = -0.5
    inner = ((a + 2) * t - (a + 3)) * t * t + 1
    outer = (((t - 5) * t + 8) * t - 4) * a
    return torch.where(t < 1, inner, torch.where(t < 2, outer, torch.zeros_like(t)))


def _lanczos(t: torch.Tensor) -> torch.Tensor:
    return torch.sinc(t) * torch.sinc(t / 3.0) * (t.abs() < 3.0)


def _triangle(t: torch.Tensor) -> torch.Tensor:
    return (1.0 - t.abs()).clamp(min=0.0)


#: mode -> (kernel, support radius in source pixels at scale 1)
_KERNELS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0), "lanczos": (_lanczos, 3.0)}


@lru_cache(maxsize=32)
def _axis_weights(n_in: int, n_out: int, mode: str) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(float weights, int16-valued weights, precision bits), both (n_out, n_in) float64, for one axis."""
    kernel, radius = _KERNELS[mode]
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # the kernel widens when downscaling (antialiasing)
    support = radius * stretch
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    first = torch.floor(centers - support + 0.5).clamp(min=0)
    last = torch.floor(centers + support + 0.5).clamp(max=n_in)
    src = torch.arange(n_in, dtype=torch.float64)
    weights = kernel((src[None, :] - centers[:, None] + 0.5) / stretch)
    weights = weights * ((src[None, :] >= first[:, None]) & (src[None, :] < last[:, None]))
    weights = weights / weights.sum(dim=1, keepdim=True)
    # int16 fixed point as torch's uint8 kernel (and PIL) quantise them: as many bits as keep the
    # largest weight below 2^15, each weight rounded half away from zero
    top, bits = float(weights.max()), 0
    while bits < 22 and int(0.5 + top * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = weights * (1 << bits)
    fixed = torch.where(scaled < 0, scaled - 0.5, scaled + 0.5).trunc()
    return weights, fixed, bits


def resampling_matrix(n_in: int, n_out: int, mode: str, dtype: torch.dtype = torch.float32,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """(n_out, n_in) antialiased resampling weights along one axis (``mode`` "bilinear", "bicubic", "lanczos"):
    pixel centres aligned, kernel stretched by the downscale factor, rows summing to 1 (torch / PIL)."""
    return _axis_weights(int(n_in), int(n_out), mode)[0].to(device=device, dtype=dtype)


def _axis_pass(x: torch.Tensor, n_out: int, dim: int, mode: str) -> torch.Tensor:
    """One separable pass along ``dim`` (-1 width, -2 height): exact uint8 value, float-weight gradient."""
    weights, fixed, bits = _axis_weights(int(x.shape[dim]), int(n_out), mode)
    w = weights.to(device=x.device, dtype=x.dtype)
    soft = torch.matmul(x, w.T) if dim == -1 else torch.matmul(w, x)
    with torch.no_grad():
        levels = x.detach().double().round()
        f = fixed.to(x.device)
        acc = torch.matmul(levels, f.T) if dim == -1 else torch.matmul(f, levels)
        hard = torch.floor((acc + (1 << (bits - 1))) / (1 << bits)).clamp(0, 255)
    return soft + (hard.to(soft.dtype) - soft).detach()


def fixed_point_resize(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased ``mode`` resize of (N, C, H, W) 0..255 floats, bit-exact with torch's CPU uint8 kernel.

    Width pass, then height pass (a pass is skipped when its size is unchanged);
    each pass sums int16 fixed-point weights times integer levels, adds half
    and shifts, clamping to 0..255, as torch does for a ``uint8`` tensor. The
    forward value is that integer result (input rounded to levels first); the
    gradient is the one of the float resampling (straight-through). Runs on any
    device (dense weight matrices; torch has no CUDA Lanczos kernel).
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-1] != w:
        x = _axis_pass(x, w, -1, mode)
    if x.shape[-2] != h:
        x = _axis_pass(x, h, -2, mode)
    return x


# ----------------------------------------------------------------- layout arithmetic (integers, exact)
def select_best_resolution(height: int, width: int, resolutions: Sequence[Sequence[int]]) -> Tuple[int, int]:
    """LLaVA-NeXT "anyres": the (height, width) among ``resolutions`` keeping the most image pixels.

    Among candidates the one with the largest effective resolution (pixels of
    the aspect-preserving fit, capped at the original count) wins, ties going to
    the least wasted canvas area; the first one listed wins exact ties.
    """
    best, best_eff, best_waste = None, 0, float("inf")
    for cand_h, cand_w in resolutions:
        scale = min(cand_w / width, cand_h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(cand_h), int(cand_w)), eff, waste
    if best is None:
        raise ValueError("no candidate resolution")
    return best


def fit_within(height: int, width: int, target: Tuple[int, int]) -> Tuple[int, int]:
    """Aspect-preserving size of a (height, width) image fitted inside ``target`` (LLaVA-NeXT, ceil-rounded)."""
    th, tw = target
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def optimal_tiled_canvas(height: int, width: int, tile: Tuple[int, int], min_tiles: int,
                         max_tiles: int) -> Tuple[int, int]:
    """InternVL / GOT-OCR2 tile grid (columns, rows) whose aspect ratio is closest to the image's.

    Grids with ``min_tiles <= cols * rows <= max_tiles`` are scanned by tile
    count; on an aspect tie the later (larger) grid wins while the image area
    exceeds half of that grid's pixel area.
    """
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile[0] * tile[1] * cols * rows:
            best = (cols, rows)
    return best


def longest_edge_size(height: int, width: int, longest: int, upper: int = 4096) -> Tuple[int, int]:
    """Idefics3 / SmolVLM first resize: longest edge to ``longest`` (up or down), short edge rounded up to even,
    then both capped at ``upper`` (aspect kept)."""
    aspect = width / height
    if width >= height:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > upper:
        w, h = upper, int(upper / aspect)
    elif h > w and h > upper:
        h, w = upper, int(upper * aspect)
    return max(h, 1), max(w, 1)


def multiple_of_tile_size(height: int, width: int, tile: int) -> Tuple[int, int]:
    """Idefics3 / SmolVLM second resize: both edges up to multiples of ``tile`` (aspect roughly kept)."""
    aspect = width / height
    if width >= height:
        w = math.ceil(width / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(height / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w
