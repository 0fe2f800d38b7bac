"""Reading an image processor's settings, and applying its rescale / normalise step.

Every differentiable processor copy reads the same fields from a transformers
image processor (or an equivalent object): :func:`normalisation_settings`
returns them as plain Python values, :func:`rescale_normalize` applies them.

A ``resample`` setting comes in several forms (a PIL code 0..5, a PIL
``Resampling`` enum, a torchvision ``InterpolationMode`` enum or its string
value, or None). :func:`resample_name` parses any of them into one canonical
filter name; each consumer then maps that name to the torch ``interpolate``
mode it can reproduce with a :class:`ResampleModes` table:
:data:`LENIENT_MODES` (the CLIP / Qwen / GLM copies, falling back to a near
kernel), :data:`TORCHVISION_MODES` (the torchvision-backend copies: nearest,
bilinear, bicubic only) and :data:`TILING_MODES` (the tiling copies, whose
fixed-point resize also does Lanczos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["normalisation_settings", "rescale_normalize", "PixelSettings", "RESAMPLE_NAMES", "resample_name", "ResampleModes",
           "LENIENT_MODES", "TORCHVISION_MODES", "TILING_MODES"]

#: canonical filter names, indexed by PIL resampling code (``PIL.Image.Resampling`` values 0..5)
RESAMPLE_NAMES = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")

#: torchvision ``InterpolationMode`` value -> canonical name. "nearest-exact" is the mode transformers'
#: torchvision backend uses for PIL's NEAREST filter, so both nearest spellings name that filter.
_TORCHVISION_NAMES = {"nearest": "nearest", "nearest-exact": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
                      "lanczos": "lanczos", "box": "box", "hamming": "hamming"}


def _three_floats(values: Any) -> tuple:
    """A scalar (repeated for the 3 channels) or a sequence as a tuple of floats."""
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    return tuple(float(v) for v in values)


def normalisation_settings(image_processor: Any, resize: bool = False) -> Dict[str, Any]:
    """The rescale / normalise fields of an image processor, as plain Python values.

    Returns ``rescale_factor`` (float, default 1/255), ``mean`` / ``std`` (tuples of
    floats per channel; a scalar is repeated for 3 channels), ``do_rescale`` and
    ``do_normalize`` (bool, default True), and ``do_resize`` (bool, default True)
    when ``resize``. The keys match the fields of the processor dataclasses and
    the arguments of :func:`rescale_normalize`.
    """
    out: Dict[str, Any] = {
        "rescale_factor": float(getattr(image_processor, "rescale_factor", 1 / 255)),
        "mean": _three_floats(image_processor.image_mean),
        "std": _three_floats(image_processor.image_std),
        "do_rescale": bool(getattr(image_processor, "do_rescale", True)),
        "do_normalize": bool(getattr(image_processor, "do_normalize", True)),
    }
    if resize:
        out["do_resize"] = bool(getattr(image_processor, "do_resize", True))
    return out


def rescale_normalize(x: torch.Tensor, rescale_factor: float, mean: Sequence[float], std: Sequence[float],
                      do_rescale: bool = True, do_normalize: bool = True) -> torch.Tensor:
    """Map 0..255 floats (..., 3, H, W) to model inputs: ``(x * rescale_factor - mean) / std`` per channel
    (each step only when switched on)."""
    if do_rescale:
        x = x * rescale_factor
    if do_normalize:
        shape = (-1, 1, 1)
        x = (x - x.new_tensor(list(mean)).view(shape)) / x.new_tensor(list(std)).view(shape)
    return x


@dataclass(frozen=True, kw_only=True)
class PixelSettings:
    """What every differentiable processor copy reads from a transformers image processor: the resample
    ``mode`` (a torch ``interpolate`` name), ``rescale_factor``, per-channel ``mean`` / ``std`` and the
    ``do_*`` switches. Processor dataclasses subclass it (keyword-only fields) and add their geometry."""

    mode: str
    rescale_factor: float
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def rescale_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """0..255 floats (..., 3, H, W) -> model inputs with these settings (:func:`rescale_normalize`)."""
        return rescale_normalize(x, self.rescale_factor, self.mean, self.std, self.do_rescale, self.do_normalize)


def resample_name(resample: Any, default: str = "bilinear") -> str:
    """Canonical filter name (one of :data:`RESAMPLE_NAMES`) of a ``resample`` setting in any form.

    Accepts a PIL code (an int, or anything ``int()`` takes: 2.0, "2"), a PIL or
    torchvision enum (its ``.value`` is read), a torchvision mode string
    ("bicubic", "nearest-exact", ...) and None (-> ``default``).

    Raises:
        ValueError: the value names no known filter (e.g. PIL code 7, "BICUBIC").
    """
    value = getattr(resample, "value", resample)
    if value is None:
        return default
    if isinstance(value, str) and value in _TORCHVISION_NAMES:
        return _TORCHVISION_NAMES[value]
    try:
        code = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"resample {resample!r} is not a PIL code or torchvision mode") from None
    if not 0 <= code < len(RESAMPLE_NAMES):
        raise ValueError(f"resample {resample!r} is not one of the PIL codes 0..{len(RESAMPLE_NAMES) - 1}")
    return RESAMPLE_NAMES[code]


@dataclass(frozen=True)
class ResampleModes:
    """One consumer's map from canonical filter names to the torch ``interpolate`` modes it reproduces.

    Attributes:
        modes: canonical name (see :data:`RESAMPLE_NAMES`) -> torch mode, for the supported filters.
        none: canonical name a None ``resample`` stands for.
        fallback: torch mode for a filter outside ``modes`` or an unparseable value;
            None raises ``NotImplementedError`` instead.
    """

    modes: Mapping[str, str]
    none: str = "bilinear"
    fallback: Optional[str] = None

    def __call__(self, resample: Any) -> str:
        """Torch interpolation mode of a ``resample`` value in any form (see :func:`resample_name`)."""
        try:
            name: Optional[str] = resample_name(resample, self.none)
        except ValueError:
            name = None
        if name in self.modes:
            return self.modes[name]
        if self.fallback is not None:
            return self.fallback
        supported = ", ".join(sorted(self.modes))
        raise NotImplementedError(f"resample {resample!r} has no differentiable counterpart here "
                                  f"(only {supported})")

    def of(self, image_processor: Any, missing: Any) -> str:
        """Torch mode of ``image_processor.resample``; ``missing`` stands in when the attribute is absent."""
        return self(getattr(image_processor, "resample", missing))


#: DifferentiableClipProcessor and the Qwen / GLM patch processors: filters torch cannot reproduce fall back
#: to a near kernel (lanczos, hamming -> bicubic; box -> bilinear), as transformers' torchvision backend does
#: on GPU; anything unrecognised is bicubic
LENIENT_MODES = ResampleModes({"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
                               "lanczos": "bicubic", "box": "bilinear", "hamming": "bicubic"},
                              none="bicubic", fallback="bicubic")

#: torchvision-backend copies (:func:`~toolkit.surrogates.processing.torchvision.resize_like_torchvision`):
#: nearest, bilinear and bicubic only
TORCHVISION_MODES = ResampleModes({"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"})

#: tiling copies (:func:`~toolkit.surrogates.processing.tiles.resize_uint8`): PIL's nearest filter samples
#: pixel centres (torch "nearest-exact"), Lanczos has a fixed-point kernel; box and hamming are not supported
TILING_MODES = ResampleModes({"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic",
                              "lanczos": "lanczos"})
