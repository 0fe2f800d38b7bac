"""JPEG re-encoding (Liu et al. 2023, "Image Shortcut Squeezing"): a cheap, strong countermeasure."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["JPEG"]


@COUNTERMEASURES.register("jpeg")
class JPEG(Transform):
    """Re-encode each training image with Pillow at JPEG ``quality`` (1..95), decode back to RGB.

    Quality 10 is the published setting that undoes class-wise error-minimising noise.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        quality: int = 10

        def __post_init__(self) -> None:
            if not isinstance(self.quality, int) or isinstance(self.quality, bool):
                raise ValueError(f"quality must be an integer in [1, 95], got {self.quality!r}")
            check_range("quality", self.quality, 1, 95)

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=self.config.quality)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
