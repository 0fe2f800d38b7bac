"""The closed vocabulary of the procedural VQA tasks: colours, shapes, sizes, words, places, numbers.

Everything here is plain module-level data, shared by the scene sampler, the
renderer, the question grammar and the tests. The layout constants (``GRID``,
``MAX_OBJECTS``, ``SIZE_FRACTION`` / ``OBJECT_SCALE``, ``TEXT_SCALE``) are only the
defaults of :class:`toolkit.datasets.scene.Layout`; code that samples, renders or
asks reads the layout it is given, never these constants.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

__all__ = [
    "COLOURS", "COLOUR_NAMES", "SHAPES", "SHAPE_PLURALS", "SIZES", "SIZE_FRACTION", "WORDS",
    "NUMBER_WORDS", "ROW_WORDS", "COL_WORDS", "SIGN_ROW_PHRASES", "SIGN_BACKGROUNDS", "SIGN_PAIRS",
    "MAX_OBJECTS", "GRID", "GRIDS", "POSITION_WORDS", "PLACE_PHRASES", "COUNT_WORDS", "OBJECT_SCALE",
    "TEXT_SCALE", "TEXT_SCALE_RANGE",
]

#: object / text colours: name -> RGB (0..255)
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(COLOURS)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SHAPE_PLURALS: Dict[str, str] = {s: s + "s" for s in SHAPES}
SIZES: Tuple[str, ...] = ("small", "large")
#: default object extent as a share of its grid cell's side
SIZE_FRACTION: Dict[str, float] = {"small": 0.45, "large": 0.8}
#: the default ``(small, large)`` object scale (``SIZE_FRACTION`` as a pair, in ``SIZES`` order)
OBJECT_SCALE: Tuple[float, float] = (SIZE_FRACTION["small"], SIZE_FRACTION["large"])
#: default side of the square object grid (GRID x GRID cells), and the allowed sides
GRID = 3
GRIDS: Tuple[int, ...] = (2, 3)
#: default most objects per scene
MAX_OBJECTS = 4
#: default sign font size as a share of the image side, and its allowed range
TEXT_SCALE = 0.3
TEXT_SCALE_RANGE: Tuple[float, float] = (0.15, 0.6)
#: words written on signs: short common nouns, none of them an answer word of another question type
WORDS: Tuple[str, ...] = ("cat", "dog", "sun", "car", "tree", "book", "fish", "bird",
                          "cake", "milk", "door", "ship", "hat", "cup", "key", "box")
#: count answers 0..9 (a scene has at most GRID x GRID = 9 objects)
COUNT_WORDS: Tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: count answers of the default layout (0..MAX_OBJECTS)
NUMBER_WORDS: Tuple[str, ...] = COUNT_WORDS[:MAX_OBJECTS + 1]
#: answers of the vertical / horizontal position questions on the default 3x3 grid, indexed by row / column
ROW_WORDS: Tuple[str, ...] = ("top", "middle", "bottom")
COL_WORDS: Tuple[str, ...] = ("left", "center", "right")
#: (row words, column words) of each grid side
POSITION_WORDS: Dict[int, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    2: (("top", "bottom"), ("left", "right")),
    3: (ROW_WORDS, COL_WORDS),
}
#: a position word as an adverbial phrase ("on the left", "in the middle", ...)
PLACE_PHRASES: Dict[str, str] = {"left": "on the left", "center": "in the center", "right": "on the right",
                                 "top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}
#: where a sign's word sits (by third of the image), as a caption phrase
SIGN_ROW_PHRASES: Tuple[str, ...] = ("at the top", "in the middle", "at the bottom")
#: sign background colours: the object colours plus white and gray
SIGN_BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {**COLOURS, "white": (245, 245, 245), "gray": (140, 140, 140)}


def _legible_pairs(min_distance: float = 120.0) -> Tuple[Tuple[str, str], ...]:
    """(text colour, background) pairs whose RGB distance is at least ``min_distance``."""
    return tuple((t, b) for t in COLOURS for b in SIGN_BACKGROUNDS
                 if t != b and math.dist(COLOURS[t], SIGN_BACKGROUNDS[b]) >= min_distance)


#: every allowed (text colour, background name) of a sign (low-contrast pairs such as yellow on orange left out)
SIGN_PAIRS: Tuple[Tuple[str, str], ...] = _legible_pairs()
