"""Stealth metrics between clean and protected images: PSNR, SSIM (scikit-image), L_inf, L_2.

All take two aligned sequences of samples (same ids, same sizes) and return the
mean over pairs. Images are compared as saved: uint8, data range 255. L_inf and
L_2 are reported in [0, 1] image units (8/255 = 0.0314).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data import VQASample
from .base import METRICS, Metric, aligned_samples

__all__ = ["ImageMetric", "PSNR", "SSIM", "LInf", "L2", "paired_images"]


def paired_images(clean: Sequence[VQASample], protected: Sequence[VQASample]):
    """Yield (clean uint8, protected uint8) pairs, checking ids and shapes align."""
    for a, b in aligned_samples(clean, protected):
        if a.image.shape != b.image.shape:
            raise ValueError(f"sample {a.id!r}: shapes differ {a.image.shape} vs {b.image.shape}")
        yield a.image, b.image


class ImageMetric(Metric):
    """Base of the image stealth metrics: the mean of :meth:`pair` over aligned (clean, protected) uint8
    HxWx3 image pairs; None for a release whose images did not change."""

    kind = "images"

    def applies(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> bool:
        """Only when some image changed (a text-only protection gets None, not a perfect score)."""
        return any(not np.array_equal(a.image, b.image) for a, b in zip(clean, released))

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover - abstract
        """The metric of one (clean, protected) uint8 HxWx3 image pair."""
        raise NotImplementedError

    def __call__(self, clean: Sequence[VQASample], protected: Sequence[VQASample]) -> float:
        return float(np.mean([self.pair(a, b) for a, b in paired_images(clean, protected)]))


@METRICS.register("psnr")
class PSNR(ImageMetric):
    """Peak signal-to-noise ratio in dB (identical images count as 100 dB)."""

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        from skimage.metrics import peak_signal_noise_ratio

        if np.array_equal(a, b):
            return 100.0
        return float(peak_signal_noise_ratio(a, b, data_range=255))


@METRICS.register("ssim")
class SSIM(ImageMetric):
    """Structural similarity (scikit-image, channel axis last, window shrunk for small images)."""

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        from skimage.metrics import structural_similarity

        win = min(7, a.shape[0], a.shape[1])
        win = win if win % 2 == 1 else win - 1
        return float(structural_similarity(a, b, data_range=255, channel_axis=-1, win_size=win))


@METRICS.register("linf")
class LInf(ImageMetric):
    """Largest absolute pixel change, in [0, 1] units (mean over images of the per-image max)."""

    higher_is_better = False

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) / 255.0


@METRICS.register("l2")
class L2(ImageMetric):
    """Euclidean norm of the change per image, in [0, 1] units."""

    higher_is_better = False

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm((a.astype(np.float64) - b.astype(np.float64)) / 255.0))
