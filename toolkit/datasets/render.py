"""Pillow rendering of scene and sign specs to uint8 RGB arrays (H, W, 3).

Drawing happens at ``SUPERSAMPLE`` x the output side and is reduced with a box
filter, so edges are anti-aliased and each output pixel is the mean of a
4 x 4 block (pixels well inside a shape keep its exact colour).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scene import Scene, Sign, Spec, spec_from_dict
from .vocab import COLOURS, GRID, SIZE_FRACTION

__all__ = ["SUPERSAMPLE", "MIN_SIZE", "MAX_SIZE", "render_spec", "render_scene", "render_sign", "font_pixels"]

SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 32, 64
#: text height (font size) as a share of the image side
TEXT_SCALE = 0.3


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {image_size!r}")


@lru_cache(maxsize=None)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def font_pixels(image_size: int) -> int:
    """Font size (pixels, at the supersampled scale) used for signs of side ``image_size``."""
    return int(round(TEXT_SCALE * image_size * SUPERSAMPLE))


def _shrink(canvas: Image.Image, image_size: int) -> np.ndarray:
    return np.asarray(canvas.resize((image_size, image_size), Image.BOX), dtype=np.uint8)


def render_scene(scene: Scene, image_size: int = 48) -> np.ndarray:
    """Draw a :class:`Scene` as a uint8 (image_size, image_size, 3) RGB array."""
    _check_size(image_size)
    big = image_size * SUPERSAMPLE
    cell = big / GRID
    canvas = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        cx, cy = (o.col + 0.5 + o.dx) * cell, (o.row + 0.5 + o.dy) * cell
        r = SIZE_FRACTION[o.size] * cell / 2  # half the object's extent
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
    """Draw a :class:`Sign` (its word centred in its third, jittered) as a uint8 RGB array."""
    _check_size(image_size)
    big = image_size * SUPERSAMPLE
    pixels = font_pixels(image_size)
    stroke = max(1, round(pixels / 25))
    font = _font(pixels)
    canvas = Image.new("RGB", (big, big), tuple(sign.background_rgb))
    draw = ImageDraw.Draw(canvas)
    left, _, right, _ = draw.textbbox((0, 0), sign.word, font=font, anchor="mm", stroke_width=stroke)
    free = max(0.0, big - (right - left) - 2 * stroke)
    x = big / 2 + sign.dx * free / 2 * 0.8
    y = (sign.row + 0.5) * big / 3 + sign.dy * 0.06 * big / 3
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
