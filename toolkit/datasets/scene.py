"""Plain, JSON-serialisable specs of the two visual domains and their seeded samplers.

A :class:`Scene` is a gray background with 1..4 coloured shapes in distinct
cells of a 3x3 grid; a :class:`Sign` is one word written on a coloured
background. Specs are sampled first (from a ``numpy.random.Generator``), then
rendered by :mod:`toolkit.datasets.render`; ``to_dict()`` is what goes into
``sample.meta["scene"]`` and :func:`spec_from_dict` reads it back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .vocab import (COLOUR_NAMES, GRID, MAX_OBJECTS, SHAPES, SIGN_BACKGROUNDS, SIGN_PAIRS, SIZE_FRACTION,
                    SIZES, WORDS)

__all__ = ["SceneObject", "Scene", "Sign", "Spec", "sample_scene", "sample_sign", "spec_from_dict"]


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene.

    Attributes:
        shape, colour, size: words from :mod:`toolkit.datasets.vocab`.
        row, col: grid cell (0..2, row 0 at the top, column 0 on the left).
        dx, dy: offset of the centre from the cell centre, as a share of the cell side.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A background RGB colour and its objects, sorted row-major (by row, then column)."""

    background: Tuple[int, int, int]
    objects: Tuple[SceneObject, ...]

    domain = "scenes"

    def to_dict(self) -> Dict[str, Any]:
        """JSON view: ``{"domain": "scenes", "background": [r, g, b], "objects": [{...}, ...]}``."""
        return {"domain": self.domain, "background": list(self.background),
                "objects": [dict(o.__dict__) for o in self.objects]}


@dataclass(frozen=True)
class Sign:
    """A word written on a plain background.

    Attributes:
        word: the written word (from ``vocab.WORDS``).
        text_colour: colour name of the letters (from ``vocab.COLOURS``).
        background: background colour name (``vocab.SIGN_BACKGROUNDS``).
        background_rgb: the exact background RGB (the named colour, slightly varied).
        row: which third of the image holds the word (0 top, 1 middle, 2 bottom).
        dx: horizontal offset in [-1, 1], a share of the free margin beside the word.
        dy: vertical offset in [-1, 1], a small share of the third's height.
    """

    word: str
    text_colour: str
    background: str
    background_rgb: Tuple[int, int, int]
    row: int
    dx: float = 0.0
    dy: float = 0.0

    domain = "signs"

    def to_dict(self) -> Dict[str, Any]:
        """JSON view with ``"domain": "signs"``."""
        out = {"domain": self.domain, **asdict(self)}
        out["background_rgb"] = list(self.background_rgb)
        return out


Spec = Union[Scene, Sign]


def _offset(rng: np.random.Generator, limit: float) -> float:
    return round(float(rng.uniform(-limit, limit)), 3)


def sample_scene(rng: np.random.Generator, n_objects: Optional[int] = None) -> Scene:
    """A random scene: light (195..230) or dark (35..70) gray background, 1..4 objects in distinct cells.

    Each object's centre is jittered inside its cell by at most half its free margin.
    """
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    level = int(rng.integers(195, 231)) if rng.random() < 0.5 else int(rng.integers(35, 71))
    background = tuple(min(255, max(0, level + int(t))) for t in rng.integers(-3, 4, size=3))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n, replace=False))
    objects = []
    for cell in cells:
        size = SIZES[int(rng.integers(len(SIZES)))]
        margin = (1.0 - SIZE_FRACTION[size]) / 2 * 0.5
        objects.append(SceneObject(shape=SHAPES[int(rng.integers(len(SHAPES)))],
                                   colour=COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))], size=size,
                                   row=cell // GRID, col=cell % GRID,
                                   dx=_offset(rng, margin), dy=_offset(rng, margin)))
    return Scene(background, tuple(objects))


def sample_sign(rng: np.random.Generator) -> Sign:
    """A random sign: a word, a text colour, a legible background for it, a third of the image, jitter."""
    text_colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]  # uniform, so text_colour answers balance
    backgrounds = [b for t, b in SIGN_PAIRS if t == text_colour]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    base = np.asarray(SIGN_BACKGROUNDS[background])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-10, 11, size=3), 0, 255))
    return Sign(word=WORDS[int(rng.integers(len(WORDS)))], text_colour=text_colour, background=background,
                background_rgb=rgb, row=int(rng.integers(3)), dx=_offset(rng, 1.0), dy=_offset(rng, 1.0))


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """Rebuild a :class:`Scene` or :class:`Sign` from its ``to_dict()`` view."""
    fields = {k: v for k, v in data.items() if k != "domain"}
    if data.get("domain") == "scenes":
        return Scene(tuple(fields["background"]), tuple(SceneObject(**o) for o in fields["objects"]))
    if data.get("domain") == "signs":
        fields["background_rgb"] = tuple(fields["background_rgb"])
        return Sign(**fields)
    raise ValueError(f"scene spec: unknown domain {data.get('domain')!r}")
