"""Shared pieces of the tiling ("any-resolution") surrogates: LLaVA-NeXT, InternVL, Idefics3 / SmolVLM.

These families cut one raw image into several fixed-size tiles (plus a
downscaled whole-image view) and decide the tile layout from the raw size.
The helpers here repeat the layout arithmetic of the transformers image
processors (pure Python on integers, so the layout is decided exactly as the
real processor decides it) and give torch versions of the pixel steps
(uint8-faithful resize, normalisation) that gradients flow through.

All pixel tensors here are floats in uint8 units (0..255), shape (N, 3, H, W),
until :func:`rescale_normalize` maps them to model inputs.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .tv_processing import native_uint8_resize, resize_like_torchvision

__all__ = ["resample_mode", "resize_uint8", "rescale_normalize", "select_best_resolution", "fit_within",
           "optimal_tiled_canvas", "longest_edge_size", "multiple_of_tile_size", "safe_boxes", "image_settings",
           "grid_cells", "to_raw", "union_box", "resampling_matrix", "fixed_point_resize"]

#: PIL resampling code -> torch interpolation mode, as transformers' torchvision backend maps them
_RESAMPLE = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def resample_mode(resample) -> str:
    """torch ``interpolate`` mode of a processor's ``resample`` (PIL code, enum or torchvision mode)."""
    value = getattr(resample, "value", resample)
    if isinstance(value, str):  # a torchvision InterpolationMode value ("bicubic", ...)
        if value in {"nearest-exact", "lanczos", "bilinear", "bicubic"}:
            return value
        raise NotImplementedError(f"resampling {value!r} has no differentiable copy")
    if value is None:
        return "bilinear"
    try:
        return _RESAMPLE[int(value)]
    except KeyError:
        raise NotImplementedError(f"PIL resampling code {value!r} (box / hamming) has no differentiable copy") from None


def resize_uint8(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (N, C, H, W) floats in 0..255 to ``size`` = (height, width) as torchvision resizes a uint8 tensor.

    Bicubic and Lanczos (the modes of these families), and bilinear where
    torchvision uses the native kernel for it (AVX2 / AVX-512 / ARM CPUs):
    torch's uint8 kernel repeated exactly (:func:`fixed_point_resize`). Other
    bilinear: float interpolation rounded once, as
    :func:`~toolkit.surrogates.tv_processing.resize_like_torchvision` does it.
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


def rescale_normalize(x: torch.Tensor, rescale_factor: float, mean: Sequence[float], std: Sequence[float],
                      do_rescale: bool = True, do_normalize: bool = True) -> torch.Tensor:
    """Map 0..255 floats (..., 3, H, W) to model inputs: ``(x * rescale_factor - mean) / std``."""
    if do_rescale:
        x = x * rescale_factor
    if do_normalize:
        shape = (-1, 1, 1)
        x = (x - x.new_tensor(list(mean)).view(shape)) / x.new_tensor(list(std)).view(shape)
    return x


def image_settings(image_processor) -> dict:
    """Rescale / normalise settings of a transformers image processor as plain Python values."""
    mean, std = image_processor.image_mean, image_processor.image_std
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    return {"rescale_factor": float(getattr(image_processor, "rescale_factor", 1 / 255)), "mean": mean, "std": std,
            "do_rescale": bool(getattr(image_processor, "do_rescale", True)),
            "do_normalize": bool(getattr(image_processor, "do_normalize", True))}


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


# ----------------------------------------------------------------- regions
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
