"""Cheap image-side countermeasures (Image Shortcut Squeezing and common pre-processing).

Each is a registered :class:`~toolkit.attacks.base.Transform` on uint8 (H, W, 3)
images of the training split. Where a strength has a natural zero (``bits=8``,
``sigma=0``, ``size=1``, ``scale=1``, ``crop=0``, ``alpha=0``) the transform is
the identity there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["Grayscale", "BitDepth", "GaussianBlur", "MedianFilter", "Resize", "RandomCropPad"]


def _int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    check_range(name, value, low, high)


@COUNTERMEASURES.register("grayscale")
class Grayscale(Transform):
    """Replace colour by ITU-R 601 luma replicated to 3 channels (Liu et al. 2023, ISS).

    ``alpha`` blends: 0 = unchanged, 1 = full grayscale.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        alpha: float = 1.0

        def __post_init__(self) -> None:
            check_range("alpha", self.alpha, 0.0, 1.0)

    def transform_image(self, image, rng):
        if self.config.alpha == 0:
            return image
        x = image.astype(np.float64)
        luma = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        out = (1 - self.config.alpha) * x + self.config.alpha * luma[..., None]
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


@COUNTERMEASURES.register("bit_depth")
class BitDepth(Transform):
    """Keep the top ``bits`` bits of each channel (bit-depth reduction), centred in each bin."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        bits: int = 3

        def __post_init__(self) -> None:
            _int("bits", self.bits, 1, 8)

    def transform_image(self, image, rng):
        if self.config.bits == 8:
            return image
        step = 256 // (1 << self.config.bits)
        return ((image // step) * step + step // 2).astype(np.uint8)


@COUNTERMEASURES.register("gaussian_blur")
class GaussianBlur(Transform):
    """Gaussian blur with standard deviation ``sigma`` pixels (scipy, reflect borders), per channel."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        sigma: float = 1.0

        def __post_init__(self) -> None:
            check_range("sigma", self.sigma, 0.0, 100.0)

    def transform_image(self, image, rng):
        if self.config.sigma == 0:
            return image
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(image.astype(np.float64), sigma=(self.config.sigma, self.config.sigma, 0))
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


@COUNTERMEASURES.register("median_filter")
class MedianFilter(Transform):
    """Median filter over a ``size`` x ``size`` window per channel (scipy, reflect borders)."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        size: int = 3

        def __post_init__(self) -> None:
            _int("size", self.size, 1, 99)

    def transform_image(self, image, rng):
        if self.config.size == 1:
            return image
        from scipy.ndimage import median_filter

        return median_filter(image, size=(self.config.size, self.config.size, 1)).astype(np.uint8)


@COUNTERMEASURES.register("resize")
class Resize(Transform):
    """Down-up resize: shrink by ``scale`` and enlarge back (Pillow, bilinear), losing fine noise."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        scale: float = 0.5

        def __post_init__(self) -> None:
            check_range("scale", self.scale, 0.0, 1.0, low_open=True)

    def transform_image(self, image, rng):
        if self.config.scale == 1:
            return image
        from PIL import Image

        h, w = image.shape[:2]
        small = Image.fromarray(image).resize((max(1, round(w * self.config.scale)),
                                               max(1, round(h * self.config.scale))), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.uint8).copy()


@COUNTERMEASURES.register("rcp")
class RandomCropPad(Transform):
    """Random crop of up to ``crop`` of each side's length, padded back to size with ``pad_value``.

    The content keeps its scale but shifts, misaligning pixel-level noise. Seeded.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        crop: float = 0.125
        pad_value: int = 0
        seed: int = 0

        def __post_init__(self) -> None:
            check_range("crop", self.crop, 0.0, 0.9)
            _int("pad_value", self.pad_value, 0, 255)

    def transform_image(self, image, rng):
        h, w = image.shape[:2]
        mh, mw = int(h * self.config.crop), int(w * self.config.crop)
        if mh == 0 and mw == 0:
            return image
        top, left = rng.integers(0, mh + 1), rng.integers(0, mw + 1)
        ch, cw = h - mh, w - mw
        out = np.full_like(image, self.config.pad_value)
        oy, ox = rng.integers(0, mh + 1), rng.integers(0, mw + 1)
        out[oy:oy + ch, ox:ox + cw] = image[top:top + ch, left:left + cw]
        return out
