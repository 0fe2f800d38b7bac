"""Pillow rendering of scene and sign specs to uint8 RGB arrays (H, W, 3).

Drawing happens at ``SUPERSAMPLE`` x the output side and is reduced with a box
filter, so edges are anti-aliased and each output pixel is the mean of a
4 x 4 block (pixels well inside a shape keep its exact colour). The grid, the
object scale and the text scale come from the spec itself (see
:class:`toolkit.datasets.scene.Layout`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scene import Scene, Sign, Spec, spec_from_dict
from .vocab import COLOURS, TEXT_SCALE

__all__ = ["SUPERSAMPLE", "MIN_SIZE", "MAX_SIZE", "TEXT_SCALE", "render_spec", "render_scene", "render_sign",
           "font_pixels"]

SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 32, 64
#: how far (share of the image side) a sign's word may stick out below the image: descenders of bottom-row
#: words at the default text scale already do, by up to ~5%; larger fonts are moved up to this limit
MAX_OVERHANG = 0.06


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {image_size!r}")


@lru_cache(maxsize=None)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def font_pixels(image_size: int, text_scale: float = TEXT_SCALE) -> int:
    """Requested font size (pixels, at the supersampled scale) of signs of side ``image_size``
    (:func:`render_sign` shrinks it for a word that would be wider than the image)."""
    return int(round(text_scale * image_size * SUPERSAMPLE))


def _fitted_font(word: str, pixels: int, big: int, draw: ImageDraw.ImageDraw
                 ) -> Tuple[ImageFont.FreeTypeFont, int, Tuple[float, float, float, float]]:
    """(font, stroke, centred bbox) of the largest font size <= ``pixels`` whose word fits in ``big`` pixels."""
    while True:
        stroke = max(1, round(pixels / 25))
        font = _font(pixels)
        box = draw.textbbox((0, 0), word, font=font, anchor="mm", stroke_width=stroke)
        width = box[2] - box[0] + 2 * stroke
        if width <= big or pixels <= 8:
            return font, stroke, box
        pixels = max(8, min(pixels - 1, int(pixels * big / width)))


def _shrink(canvas: Image.Image, image_size: int) -> np.ndarray:
    return np.asarray(canvas.resize((image_size, image_size), Image.BOX), dtype=np.uint8)


def render_scene(scene: Scene, image_size: int = 48) -> np.ndarray:
    """Draw a :class:`Scene` as a uint8 (image_size, image_size, 3) RGB array."""
    _check_size(image_size)
    big = image_size * SUPERSAMPLE
    cell = big / scene.grid
    canvas = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        cx, cy = (o.col + 0.5 + o.dx) * cell, (o.row + 0.5 + o.dy) * cell
        r = scene.size_fraction(o.size) * cell / 2  # half the object's extent
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o.shape == "square":
            h = r * 0.88
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"scene: unknown shape {o.shape!r}")
    return _shrink(canvas, image_size)


def render_sign(sign: Sign, image_size: int = 48) -> np.ndarray:
    """Draw a :class:`Sign` (its word centred in its third, jittered) as a uint8 RGB array.

    The font is ``sign.text_scale`` of the image side, shrunk if the word would be wider than the image.
    A word is moved down if it would stick out above the image, and up if its baseline would be below the
    image or its descenders more than ``MAX_OVERHANG`` of the side below it (no move at the default scale).
    """
    _check_size(image_size)
    big = image_size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), tuple(sign.background_rgb))
    draw = ImageDraw.Draw(canvas)
    font, stroke, (left, top, right, bottom) = _fitted_font(sign.word, font_pixels(image_size, sign.text_scale),
                                                       big, draw)
    free = max(0.0, big - (right - left) - 2 * stroke)
    x = big / 2 + sign.dx * free / 2 * 0.8
    y = (sign.row + 0.5) * big / 3 + sign.dy * 0.06 * big / 3
    baseline = top - draw.textbbox((0, 0), sign.word, font=font, anchor="ms", stroke_width=stroke)[1]
    y = min(y, big - baseline, big * (1 + MAX_OVERHANG) - bottom)
    y = max(y, -top)
    colour = COLOURS[sign.text_colour]
    draw.text((x, y), sign.word, fill=colour, font=font, anchor="mm", stroke_width=stroke, stroke_fill=colour)
    return _shrink(canvas, image_size)


def render_spec(spec: Union[Spec, dict], image_size: int = 48) -> np.ndarray:
    """Render a :class:`Scene`, a :class:`Sign` or either one's ``to_dict()`` view."""
    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    if isinstance(spec, Scene):
        return render_scene(spec, image_size)
    if isinstance(spec, Sign):
        return render_sign(spec, image_size)
    raise TypeError(f"render_spec: expected a Scene or Sign, got {type(spec).__name__}")
