"""Differentiable copies of transformers' torchvision-backend image processors (SigLIP, Gemma 3, PaliGemma, Mllama).

transformers' torchvision image processors resize ``uint8`` tensors with
``torchvision.transforms.v2.functional.resize(antialias=True)``. On a CPU,
torchvision runs bicubic (always) and bilinear (AVX2 / AVX-512 / ARM CPUs)
resizes with torch's native ``uint8`` kernel: a separable width pass, a ``uint8``
intermediate, then a height pass, each rounded half-up from fixed-point sums.
Elsewhere it resizes in float and rounds once at the end (half to even).
:func:`resize_like_torchvision` repeats whichever path the real processor
takes, with straight-through rounding (forward: rounded value, backward:
identity), so the output matches within one ``uint8`` level;
:class:`DifferentiableFixedSizeProcessor` is the fixed-size processor built on it.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .rounding import round_half_up_ste, round_ste
from .settings import TORCHVISION_MODES, PixelSettings, normalisation_settings

__all__ = ["native_uint8_resize", "resize_like_torchvision", "DifferentiableFixedSizeProcessor"]


def native_uint8_resize(mode: str) -> bool:
    """Whether torchvision resizes a CPU ``uint8`` image in ``uint8`` (two rounded passes) for torch mode ``mode``.

    Mirrors torchvision's own test: bicubic always, bilinear on AVX2 / AVX-512 / ARM CPUs.
    """
    if mode == "bicubic":
        return True
    if mode == "bilinear":
        return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                or platform.machine() in ("aarch64", "arm64"))
    return False


def resize_like_torchvision(x: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear",
                            native_uint8: Optional[bool] = None) -> torch.Tensor:
    """Antialiased resize of ``x`` (N, C, H, W) holding 0..255 floats, as torchvision resizes ``uint8``.

    Args:
        x: image batch in uint8 units (0..255), any float dtype; differentiable.
        size: (height, width) of the output.
        mode: "bilinear", "bicubic" or "nearest".
        native_uint8: force the two-pass ``uint8`` path (True) or the float path (False);
            None decides as torchvision would on this CPU (:func:`native_uint8_resize`).

    Returns:
        (N, C, height, width) values on the uint8 grid (straight-through rounding).
    """
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(h, w), mode="nearest")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unsupported resize mode {mode!r}")
    native = native_uint8_resize(mode) if native_uint8 is None else bool(native_uint8)
    kwargs = {"mode": mode, "antialias": True, "align_corners": False}
    if not native:  # float interpolation, one rounding at the end (half to even)
        out = F.interpolate(x, size=(h, w), **kwargs)
        return round_ste(out.clamp(0, 255))
    if x.shape[-1] != w:
        x = round_half_up_ste(F.interpolate(x, size=(x.shape[-2], w), **kwargs).clamp(0, 255))
    if x.shape[-2] != h:
        x = round_half_up_ste(F.interpolate(x, size=(h, w), **kwargs).clamp(0, 255))
    return x


@dataclass(frozen=True, kw_only=True)
class DifferentiableFixedSizeProcessor(PixelSettings):
    """Torch copy of a fixed-size image processor (SigLIP, Gemma 3 without pan-and-scan, PaliGemma).

    Steps: resize to ``size`` (aspect ratio not kept, no crop), rescale, normalise.
    ``__call__`` maps (N, 3, H, W) floats in [0, 1] (any H, W) to (N, 3, size_h, size_w)
    normalised ``pixel_values``.
    """

    size: Tuple[int, int]
    native_uint8: bool = True

    @classmethod
    def from_hf(cls, image_processor) -> "DifferentiableFixedSizeProcessor":
        """Read the settings of a transformers fixed-size image processor (``size`` = height/width)."""
        size = dict(getattr(image_processor, "size", None) or {})
        if not (size.get("height") and size.get("width")):
            raise ValueError(f"expected a fixed height/width size, got {size}")
        mode = TORCHVISION_MODES.of(image_processor, missing=2)
        return cls(
            size=(int(size["height"]), int(size["width"])),
            mode=mode,
            **normalisation_settings(image_processor, resize=True),
            native_uint8=native_uint8_resize(mode),
        )

    @property
    def output_size(self) -> Tuple[int, int]:
        """(height, width) of ``pixel_values``."""
        return self.size

    def pixel_geometry(self, height: int, width: int) -> Tuple[float, float, float, float]:
        """(scale_y, scale_x, offset_y, offset_x): processed pixel (r, c) sees raw ((r + oy) * sy, (c + ox) * sx)."""
        if not self.do_resize:
            return 1.0, 1.0, 0.0, 0.0
        return height / self.size[0], width / self.size[1], 0.0, 0.0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised (N, 3, size_h, size_w), differentiable."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        x = pixels * 255.0
        if self.do_resize:
            x = resize_like_torchvision(x, self.size, self.mode, self.native_uint8)
        return self.rescale_normalize(x)
