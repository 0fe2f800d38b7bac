"""Differentiable pixel transforms for expectation over transformations (EOT), and a low-pass projection.

A defense that wants its perturbation to survive purification (JPEG re-encoding, blur, rescaling) can
optimise the loss of T(x + delta) for transforms T drawn at random at every PGD step instead of the
loss of x + delta. This module holds those transforms (the ``PIXEL_TRANSFORMS`` registry), the
:class:`EOT` set a config lists (``eot: [{name: jpeg, quality: [10, 50]}, {name: gaussian_blur}]``)
and :func:`low_pass`, the projection onto the lowest 2-D DCT frequencies.

Conventions: images are float tensors (B, 3, H, W) in [0, 1]; every transform keeps the shape, returns
values in [0, 1] and is differentiable with respect to the pixels (JPEG by a straight-through
estimator). A numeric parameter is a number or a ``[low, high]`` range drawn uniformly (integers for
JPEG quality). Random draws come from the caller's ``torch.Generator`` and are made only when there is
something to draw: a set with a single transform whose parameters are all fixed consumes no random
numbers, so ``eot: [{name: identity}]`` leaves a seeded run bit for bit unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .registry import Config, Registry, check_range, make_config

__all__ = ["PIXEL_TRANSFORMS", "PixelTransform", "EOT", "check_eot", "jpeg_pillow", "straight_through_jpeg",
           "low_pass", "energy_outside_band"]

#: name -> :class:`PixelTransform` subclass (the names an ``eot`` list may use)
PIXEL_TRANSFORMS: Registry = Registry("pixel transform", group="mmguard.pixel_transforms")

View = Callable[[torch.Tensor], torch.Tensor]
Span = Union[float, int, Sequence[float]]


# ----------------------------------------------------------------------------- parameter ranges
def as_range(name: str, value: Span, low: float, high: float, *, integer: bool = False,
             low_open: bool = False) -> Tuple[float, float]:
    """``value`` (a number or ``[lo, hi]``) as ``(lo, hi)`` inside [low, high]; ``ValueError`` names ``name``."""
    pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or a [low, high] pair, got {value!r}")
    for v in pair:
        if integer and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError(f"{name} must hold integers, got {value!r}")
        check_range(name, v, low, high, low_open=low_open)
    if pair[0] > pair[1]:
        raise ValueError(f"{name} range must be [low, high] with low <= high, got {value!r}")
    return pair[0], pair[1]


def draw_uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi]; ``lo`` without consuming a random number when the range is a point."""
    return lo if lo == hi else lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def draw_integer(gen: torch.Generator, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] (inclusive); no random number consumed when lo == hi."""
    return lo if lo == hi else int(torch.randint(lo, hi + 1, (), generator=gen))


# ----------------------------------------------------------------------------- transforms
class PixelTransform:
    """A random pixel transform. :meth:`draw` fixes its random parameters and returns the view, a function
    (B, 3, H, W) -> (B, 3, H, W) in [0, 1] that applies them (the same parameters to every image of the
    batch and to every call, so the clean and the protected images of a step can see the same T), or
    ``None`` for the identity. Subclasses declare ``Config`` and validate their ranges there."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config(Config):
        pass

    name = "?"

    def __init__(self, **config: Any) -> None:
        self.config = make_config(type(self).Config, f"pixel transform {self.name!r}", config)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        raise NotImplementedError


@PIXEL_TRANSFORMS.register("identity")
class Identity(PixelTransform):
    """No change (mixes clean draws into an EOT set)."""

    def draw(self, gen: torch.Generator) -> Optional[View]:
        return None


def jpeg_pillow(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow's JPEG round trip of (B, 3, H, W) in [0, 1]: round to uint8, encode at ``quality`` (Pillow's
    defaults otherwise, as the ``jpeg`` countermeasure), decode; returns float (B, 3, H, W) in [0, 1]
    on the input's device and dtype."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
    back = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return back.to(images.device, images.dtype) / 255.0


def straight_through_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Forward: :func:`jpeg_pillow` (the real codec); backward: the identity (a straight-through estimator)."""
    return images + (jpeg_pillow(images, quality) - images).detach()


@PIXEL_TRANSFORMS.register("jpeg")
class JPEG(PixelTransform):
    """Real JPEG re-encoding (Pillow) with a straight-through gradient.

    Config: ``quality`` (an integer in [1, 95] or a ``[low, high]`` range, default [10, 50]).
    The forward pass is exactly what the attacker's ``jpeg`` countermeasure does to a uint8 image, so the
    loss is evaluated at the purified point; the backward pass is the identity, which ignores that JPEG
    drops fine detail (combine with ``low_frequency`` to keep the perturbation where JPEG keeps energy).
    """

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config(Config):
        quality: Any = (10, 50)

        def __post_init__(self) -> None:
            as_range("quality", self.quality, 1, 95, integer=True)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        q = draw_integer(gen, *as_range("quality", self.config.quality, 1, 95, integer=True))
        return lambda images: straight_through_jpeg(images, q)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with standard deviation ``sigma`` pixels (kernel radius
    ceil(3 sigma), edges replicated); differentiable."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@PIXEL_TRANSFORMS.register("gaussian_blur")
class GaussianBlur(PixelTransform):
    """Gaussian blur. Config: ``sigma`` (pixels, in (0, 10], or a range; default [0.5, 1.5])."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config(Config):
        sigma: Any = (0.5, 1.5)

        def __post_init__(self) -> None:
            as_range("sigma", self.sigma, 0, 10, low_open=True)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        s = draw_uniform(gen, *as_range("sigma", self.config.sigma, 0, 10, low_open=True))
        return lambda images: gaussian_blur(images, s).clamp(0, 1)


def down_up(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear down-scaling of (B, C, H, W) by ``scale`` (antialiased, as Pillow's BILINEAR) and back up."""
    h, w = images.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    if small == (h, w):
        return images
    out = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


@PIXEL_TRANSFORMS.register("resize")
class Resize(PixelTransform):
    """Down-and-up bilinear rescaling. Config: ``scale`` (in (0, 1], or a range; default [0.5, 0.9])."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config(Config):
        scale: Any = (0.5, 0.9)

        def __post_init__(self) -> None:
            as_range("scale", self.scale, 0, 1, low_open=True)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        s = draw_uniform(gen, *as_range("scale", self.config.scale, 0, 1, low_open=True))
        return lambda images: down_up(images, s).clamp(0, 1)


@PIXEL_TRANSFORMS.register("crop")
class Crop(PixelTransform):
    """Random crop resized back to the full size (bilinear). Config: ``scale``, the kept share of each side
    (in (0, 1], or a range; default [0.8, 1.0]); the crop's position is uniform."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config(Config):
        scale: Any = (0.8, 1.0)

        def __post_init__(self) -> None:
            as_range("scale", self.scale, 0, 1, low_open=True)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        s = draw_uniform(gen, *as_range("scale", self.config.scale, 0, 1, low_open=True))
        u, v = float(torch.rand((), generator=gen)), float(torch.rand((), generator=gen))

        def view(images: torch.Tensor) -> torch.Tensor:
            h, w = images.shape[-2:]
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            top, left = int(u * (h - ch + 1)), int(v * (w - cw + 1))
            crop = images[..., top:top + ch, left:left + cw]
            if (ch, cw) == (h, w):
                return crop
            return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return view


# ----------------------------------------------------------------------------- the set a config lists
def _entry(field: str, i: int, entry: Any) -> PixelTransform:
    where = f"{field}[{i}]"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{where} must be a mapping with a 'name' (one of {PIXEL_TRANSFORMS.names()}), got {entry!r}")
    name = entry["name"]
    if name not in PIXEL_TRANSFORMS:
        raise ValueError(f"{where}.name: unknown pixel transform {name!r}; known: {PIXEL_TRANSFORMS.names()}")
    params = {k: v for k, v in entry.items() if k != "name"}
    try:
        return PIXEL_TRANSFORMS.create(name, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} ({name}): {exc}") from None


def check_eot(field: str, entries: Any) -> Tuple[Dict[str, Any], ...]:
    """Validate an ``eot`` list (mappings ``{name: ..., <params>}``) and return it as a tuple of plain
    dicts; a ``ValueError`` names ``field[i]`` and, for a bad parameter, the parameter."""
    if entries is None:
        return ()
    if isinstance(entries, Mapping) or not isinstance(entries, (list, tuple)):
        raise ValueError(f"{field} must be a list of transforms ({{name: ..., <params>}}), got {entries!r}")
    for i, e in enumerate(entries):
        _entry(field, i, e)
    return tuple(dict(e) for e in entries)


class EOT:
    """A set of random transforms; each :meth:`draw` picks one uniformly and fixes its parameters.

    The pick consumes a random number only when the set has more than one transform, and a transform
    consumes one only for parameters given as a range (or a random position), so a set that cannot vary
    draws nothing from the generator.
    """

    def __init__(self, entries: Sequence[Mapping[str, Any]] = (), field: str = "eot") -> None:
        self.transforms: List[PixelTransform] = [_entry(field, i, e) for i, e in enumerate(entries)]

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def draw(self, gen: torch.Generator) -> Optional[View]:
        """A view with fixed parameters ((B, 3, H, W) -> same), or ``None`` for the identity."""
        if not self.transforms:
            return None
        k = int(torch.randint(len(self.transforms), (), generator=gen)) if len(self.transforms) > 1 else 0
        return self.transforms[k].draw(gen)


# ----------------------------------------------------------------------------- low-pass projection
@functools.lru_cache(maxsize=64)
def _band_projector(n: int, k: int) -> torch.Tensor:
    """(n, n) float64 orthogonal projector onto the ``k`` lowest orthonormal DCT-II basis vectors."""
    i = torch.arange(n, dtype=torch.float64)
    basis = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)  # row f: frequency f
    basis[0] /= math.sqrt(2.0)
    low = basis[:min(k, n)]
    return low.T @ low


def low_pass(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k x k lowest 2-D DCT coefficients of every (H, W) plane of ``delta`` (..., H, W); the
    orthogonal projection onto that band (the whole image's DCT, per channel). ``k >= max(H, W)`` or
    ``k <= 0`` returns ``delta`` unchanged."""
    h, w = delta.shape[-2:]
    if k <= 0 or (k >= h and k >= w):
        return delta
    ph = _band_projector(h, k).to(delta.device, delta.dtype)
    pw = _band_projector(w, k).to(delta.device, delta.dtype)
    return ph @ delta @ pw


def energy_outside_band(delta: torch.Tensor, k: int) -> float:
    """Share of the squared L2 energy of ``delta`` (..., H, W) outside the k x k lowest DCT frequencies."""
    total = float(delta.double().pow(2).sum())
    if total == 0:
        return 0.0
    return float((delta.double() - low_pass(delta.double(), k)).pow(2).sum()) / total
