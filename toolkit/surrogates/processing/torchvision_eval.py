"""Differentiable copies of torchvision-style evaluation transforms (open_clip, timm).

open_clip's ``image_transform(..., is_train=False)`` and timm's
``create_transform(..., is_training=False)`` run torchvision transforms on a
PIL image: an antialiased resize (shortest edge, keep-ratio or squash), a
center crop (padding first when the crop is larger), ``ToTensor`` and
``Normalize``. :class:`DifferentiableEvalTransform` repeats those steps on
float tensors; every uint8 rounding of PIL's separable resize becomes a
straight-through rounding (see :func:`~.pil.resize_like_pil`), so the output
equals the library's within about one uint8 level of resampling arithmetic
(PIL uses fixed-point filter weights). Geometry (output sizes, crop offsets
with Python's ``round``) is reproduced exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .pil import resize_like_pil, shortest_edge_size

__all__ = ["DifferentiableEvalTransform", "center_crop_or_pad"]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _pair(size: Any) -> Tuple[int, int]:
    """An int or a (.., h, w) sequence as (h, w)."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    return size[-2], size[-1]


def center_crop_or_pad(x: torch.Tensor, crop: Sequence[int], fill: Sequence[float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """torchvision ``center_crop`` / open_clip ``center_crop_or_pad`` on (N, C, H, W).

    Pads with ``fill`` (per channel, same units as ``x``) when the crop is larger
    (left/top get the smaller half), then crops at ``round((H - ch) / 2)`` with
    Python's round, as torchvision does.
    """
    ch, cw = int(crop[0]), int(crop[1])
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        left, right = ((cw - w) // 2, (cw - w + 1) // 2) if cw > w else (0, 0)
        top, bottom = ((ch - h) // 2, (ch - h + 1) // 2) if ch > h else (0, 0)
        pad = [left, right, top, bottom]
        inside = F.pad(torch.ones_like(x[:1, :1]), pad)
        x = F.pad(x, pad) + (1.0 - inside) * x.new_tensor([float(v) for v in fill]).view(1, -1, 1, 1)
        h, w = x.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top:top + ch, left:left + cw]


@dataclass(frozen=True)
class DifferentiableEvalTransform:
    """Resize + center crop (or pad) + normalise, in torch, as a torchvision eval pipeline does.

    Attributes:
        resize: ``"shortest"`` (torchvision ``Resize(int)``: short side = ``size[0]``,
            long side truncated), ``"keep_ratio"`` (``ResizeKeepRatio(size, longest)``:
            both sides scaled by one ratio, Python-rounded), ``"squash"`` (exactly
            ``size``) or ``"none"``.
        size: resize target (height, width) in pixels.
        crop: center-crop size (height, width), or None for no crop.
        longest: ``ResizeKeepRatio``'s blend: 0 fits the shorter side, 1 the longer.
        fill: padding colour per channel, uint8 units (0..255), when the crop exceeds the image.
        mode: ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` (PIL filters).
        mean, std: per-channel normalisation of [0, 1] values.

    ``__call__`` maps (N, 3, H, W) floats in [0, 1] (any H, W) to the model input
    (N, 3, crop_h, crop_w) (or the resize size without a crop), differentiably.
    """

    resize: str
    size: Tuple[int, int]
    crop: Optional[Tuple[int, int]]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    longest: float = 0.0
    fill: Tuple[float, ...] = (0.0, 0.0, 0.0)
    mode: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in ("shortest", "keep_ratio", "squash", "none"):
            raise ValueError(f"resize must be shortest, keep_ratio, squash or none, got {self.resize!r}")
        if self.mode not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {self.mode!r} is not supported; use one of {_INTERPOLATIONS}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean} / {self.std}")

    # ----------------------------------------------------------------- factories
    @classmethod
    def from_open_clip(cls, cfg: Mapping[str, Any]) -> "DifferentiableEvalTransform":
        """Mirror ``open_clip.image_transform(size, is_train=False, ...)`` for a preprocess config
        (keys ``size``, ``mean``, ``std``, ``interpolation``, ``resize_mode``, ``fill_color``)."""
        size = _pair(cfg.get("size", 224))
        mean = tuple(float(v) for v in _triple(cfg.get("mean")))
        std = tuple(float(v) for v in _triple(cfg.get("std")))
        mode = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"  # 'random' -> bicubic at eval
        resize_mode = cfg.get("resize_mode") or "shortest"
        fill = (float(cfg.get("fill_color", 0) or 0),) * 3
        if resize_mode == "longest":
            return cls("keep_ratio", size, size, mean, std, longest=1.0, fill=fill, mode=mode)
        if resize_mode == "squash":
            return cls("squash", size, None, mean, std, mode=mode)
        if resize_mode != "shortest":
            raise ValueError(f"open_clip resize_mode {resize_mode!r} is not supported")
        if size[0] == size[1]:
            return cls("shortest", size, size, mean, std, mode=mode)
        # open_clip builds ResizeKeepRatio(size) with its default (bicubic) filter here
        return cls("keep_ratio", size, size, mean, std, longest=0.0, mode="bicubic")

    @classmethod
    def from_timm(cls, data_config: Mapping[str, Any]) -> "DifferentiableEvalTransform":
        """Mirror ``timm.data.create_transform(**data_config, is_training=False)`` for a config from
        ``timm.data.resolve_data_config`` (``input_size``, ``interpolation``, ``mean``, ``std``,
        ``crop_pct``, ``crop_mode``)."""
        img = _pair(data_config.get("input_size", (3, 224, 224)))
        crop_pct = float(data_config.get("crop_pct") or 0.875)
        scale = (math.floor(img[0] / crop_pct), math.floor(img[1] / crop_pct))
        mean = tuple(float(v) for v in _triple(data_config.get("mean")))
        std = tuple(float(v) for v in _triple(data_config.get("std")))
        mode = str(data_config.get("interpolation") or "bilinear")
        if mode not in _INTERPOLATIONS:
            raise ValueError(f"timm interpolation {mode!r} is not supported; use one of {_INTERPOLATIONS}")
        crop_mode = data_config.get("crop_mode") or "center"
        if crop_mode == "squash":
            return cls("squash", scale, img, mean, std, mode=mode)
        if crop_mode == "border":
            fill = tuple(float(round(255 * v)) for v in mean)
            return cls("keep_ratio", scale, img, mean, std, longest=1.0, fill=fill, mode=mode)
        if crop_mode != "center":
            raise ValueError(f"timm crop_mode {crop_mode!r} is not supported")
        if scale[0] == scale[1]:
            return cls("shortest", scale, img, mean, std, mode=mode)
        return cls("keep_ratio", scale, img, mean, std, longest=0.0, mode=mode)

    # ----------------------------------------------------------------- geometry
    @property
    def output_size(self) -> Tuple[int, int]:
        """(height, width) of the model input for a square image of the target size."""
        if self.crop is not None:
            return self.crop
        return self.size

    def resize_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) after the resize step for a raw ``height`` x ``width`` image."""
        th, tw = self.size
        if self.resize == "none":
            return height, width
        if self.resize == "squash":
            return th, tw
        if self.resize == "shortest":  # torchvision _compute_resized_output_size
            return shortest_edge_size(height, width, th)
        ratio_h, ratio_w = height / th, width / tw
        ratio = max(ratio_h, ratio_w) * self.longest + min(ratio_h, ratio_w) * (1.0 - self.longest)
        return round(height / ratio), round(width / ratio)

    # ----------------------------------------------------------------- transform
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised model input (N, 3, crop_h, crop_w), differentiable."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        x = pixels * 255.0
        shape = self.resize_shape(*x.shape[-2:])
        if tuple(x.shape[-2:]) != tuple(shape):
            if self.mode == "nearest":  # PIL NEAREST samples pixel centres, like torch "nearest-exact"
                x = F.interpolate(x, size=shape, mode="nearest-exact")
            else:
                x = resize_like_pil(x, shape, self.mode)
        if self.crop is not None:
            x = center_crop_or_pad(x, self.crop, self.fill)
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return (x / 255.0 - mean) / std


def _triple(values: Any) -> Tuple[float, float, float]:
    """A scalar or 1/3-sequence as three floats (open_clip allows a scalar mean/std)."""
    if values is None:
        raise ValueError("mean/std missing from the preprocessing config")
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]
