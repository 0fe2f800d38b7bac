"""Differentiable copies of PIL-style resizing and of the CLIP-style Hugging Face image processor.

A perturbation lives in raw pixel space at the release resolution, so the
surrogate must map pixels in [0, 1] to its model's ``pixel_values`` with torch
operations that gradients can flow through. The real processors resize a uint8
image (torchvision's or PIL's antialiased kernels, both separable: width pass,
rounding to uint8, height pass, rounding), center-crop, rescale and normalise.
:func:`resize_like_pil` repeats the resize in float with each rounding
replaced by a straight-through estimator (:func:`~.rounding.round_ste`), and
:class:`DifferentiableClipProcessor` chains the whole pipeline, so its output
equals the real one within one uint8 level of resampling arithmetic (two on
rare pixels when upscaling, where the real kernels use fixed-point weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .rounding import round_ste
from .settings import LENIENT_MODES, PixelSettings, normalisation_settings

__all__ = ["DifferentiableClipProcessor", "resize_like_pil", "shortest_edge_size"]


def resize_like_pil(x: torch.Tensor, size: Tuple[int, int], mode: str = "bicubic",
                    quantize: bool = True) -> torch.Tensor:
    """Antialiased separable resize of ``x`` (N, C, H, W), values in 0..255 float, to ``size`` = (height, width).

    Width first, then height, with optional straight-through rounding to uint8
    levels after each pass, as PIL and torchvision's uint8 kernels do. ``mode`` is a
    torch interpolation mode ("nearest", "bilinear", "bicubic"). A no-op when the size
    is unchanged.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2:] == (h, w):
        return x
    kwargs = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
    if x.shape[-1] != w:
        x = F.interpolate(x, size=(x.shape[-2], w), mode=mode, **kwargs)
        if quantize:
            x = round_ste(x.clamp(0, 255))
    if x.shape[-2] != h:
        x = F.interpolate(x, size=(h, w), mode=mode, **kwargs)
        if quantize:
            x = round_ste(x.clamp(0, 255))
    return x


def shortest_edge_size(height: int, width: int, shortest: int,
                       longest: Optional[int] = None) -> Tuple[int, int]:
    """(height, width) after a "shortest_edge" resize of a ``height`` x ``width`` image (pixels).

    The short side becomes ``shortest``, the long side keeps the aspect ratio
    (truncated to an int), as transformers and torchvision ``Resize(int)`` compute it;
    with ``longest``, both shrink so the long side does not exceed it.
    """
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest, int(shortest * long / short)
    if longest is not None and new_long > longest:
        new_short, new_long = int(longest * new_short / new_long), longest
    return (new_short, new_long) if height <= width else (new_long, new_short)


@dataclass(frozen=True, kw_only=True)
class DifferentiableClipProcessor(PixelSettings):
    """Torch re-implementation of the CLIP-style image processor (LLaVA, CLIP, ...).

    Built from a real processor with :meth:`from_hf`; the resolution and layout
    are read once and then held fixed.

    Shapes: ``__call__`` takes (N, 3, H, W) floats in [0, 1] (any H, W) and returns
    (N, 3, crop_h, crop_w) normalised ``pixel_values``.
    """

    size: Tuple[Optional[int], Optional[int]]  # (height, width) or (None, None)
    shortest_edge: Optional[int]
    crop: Optional[Tuple[int, int]]

    @classmethod
    def from_hf(cls, image_processor) -> "DifferentiableClipProcessor":
        """Read the settings of a transformers CLIP-style image processor."""
        size = dict(getattr(image_processor, "size", None) or {})
        crop = dict(getattr(image_processor, "crop_size", None) or {})
        return cls(
            size=(size.get("height"), size.get("width")),
            shortest_edge=size.get("shortest_edge"),
            crop=(crop["height"], crop["width"]) if getattr(image_processor, "do_center_crop", False) and crop else None,
            mode=LENIENT_MODES.of(image_processor, missing=3),
            **normalisation_settings(image_processor, resize=True),
        )

    @property
    def output_size(self) -> Tuple[int, int]:
        """(height, width) of ``pixel_values`` for a square input of the model's size."""
        if self.crop is not None:
            return self.crop
        if self.size[0] is not None:
            return self.size  # type: ignore[return-value]
        return (self.shortest_edge, self.shortest_edge)  # type: ignore[return-value]

    def resize_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Size after the resize step for an input of ``height`` x ``width``."""
        if not self.do_resize:
            return height, width
        if self.shortest_edge is not None:
            return shortest_edge_size(height, width, self.shortest_edge)
        return self.size  # type: ignore[return-value]

    def pixel_geometry(self, height: int, width: int) -> Tuple[float, float, float, float]:
        """Affine map from the processed image back to the raw image.

        Returns (scale_y, scale_x, offset_y, offset_x) such that a processed pixel
        at (r, c) sees raw coordinates ((r + off_y) * sy, (c + off_x) * sx).
        Used to find the raw region an image token looks at.
        """
        rh, rw = self.resize_shape(height, width)
        top = left = 0
        if self.crop is not None:
            top, left = int((rh - self.crop[0]) / 2.0), int((rw - self.crop[1]) / 2.0)
        return height / rh, width / rw, float(top), float(left)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised (N, 3, crop_h, crop_w), differentiable."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        x = pixels * 255.0
        if self.do_resize:
            x = resize_like_pil(x, self.resize_shape(*x.shape[-2:]), self.mode)
        if self.crop is not None:
            x = _center_crop(x, self.crop)
        return self.rescale_normalize(x)


def _center_crop(x: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """Center crop of (N, C, H, W) with zero padding when the crop is larger, as transformers does
    (offsets truncated, unlike torchvision's rounded ones)."""
    ch, cw = int(crop[0]), int(crop[1])
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        pad = [(cw - w) // 2 if cw > w else 0, (cw - w + 1) // 2 if cw > w else 0,
               (ch - h) // 2 if ch > h else 0, (ch - h + 1) // 2 if ch > h else 0]
        x = F.pad(x, pad)
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top:top + ch, left:left + cw]
