"""The closed vocabulary of the procedural VQA tasks: colours, shapes, sizes, words, places, numbers.

Everything here is plain module-level data, shared by the scene sampler, the
renderer, the question grammar and the tests.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

__all__ = [
    "COLOURS", "COLOUR_NAMES", "SHAPES", "SHAPE_PLURALS", "SIZES", "SIZE_FRACTION", "WORDS",
    "NUMBER_WORDS", "ROW_WORDS", "COL_WORDS", "SIGN_ROW_PHRASES", "SIGN_BACKGROUNDS", "SIGN_PAIRS",
    "MAX_OBJECTS", "GRID",
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
#: object extent as a share of its grid cell's side
SIZE_FRACTION: Dict[str, float] = {"small": 0.45, "large": 0.8}
#: side of the square object grid (GRID x GRID cells)
GRID = 3
MAX_OBJECTS = 4
#: words written on signs: short common nouns, none of them an answer word of another question type
WORDS: Tuple[str, ...] = ("cat", "dog", "sun", "car", "tree", "book", "fish", "bird",
                          "cake", "milk", "door", "ship", "hat", "cup", "key", "box")
NUMBER_WORDS: Tuple[str, ...] = ("zero", "one", "two", "three", "four")
#: answers of the vertical / horizontal position questions, indexed by grid row / column
ROW_WORDS: Tuple[str, ...] = ("top", "middle", "bottom")
COL_WORDS: Tuple[str, ...] = ("left", "center", "right")
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
