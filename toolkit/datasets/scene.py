"""Plain, JSON-serialisable specs of the two visual domains and their seeded samplers.

A :class:`Scene` is a gray background with 1..``max_objects`` coloured shapes in
distinct cells of a ``grid`` x ``grid`` grid; a :class:`Sign` is one word written on
a coloured background. A :class:`Layout` holds the difficulty knobs (grid side,
most objects, object scale, text scale); the sampler copies the ones rendering
needs into each spec, so a spec alone re-renders its image. Specs are sampled
first (from a ``numpy.random.Generator``), then rendered by
:mod:`toolkit.datasets.render`; ``to_dict()`` is what goes into
``sample.meta["scene"]`` and :func:`spec_from_dict` reads it back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..registry import check_choice, check_range
from .vocab import (COLOUR_NAMES, GRID, GRIDS, MAX_OBJECTS, OBJECT_SCALE, POSITION_WORDS, SHAPES,
                    SIGN_BACKGROUNDS, SIGN_PAIRS, SIZES, TEXT_SCALE, TEXT_SCALE_RANGE, WORDS)

__all__ = ["Layout", "DEFAULT_LAYOUT", "SceneObject", "Scene", "Sign", "Spec", "sample_scene", "sample_sign",
           "spec_from_dict", "apply_layout", "check_grid", "check_object_scale", "check_text_scale"]


def check_grid(grid: Any) -> int:
    """``grid`` as an int; ``ValueError`` naming ``grid`` unless it is one of ``vocab.GRIDS``."""
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)):
        raise ValueError(f"grid must be one of {list(GRIDS)}, got {grid!r}")
    check_choice("grid", int(grid), GRIDS)
    return int(grid)


def check_object_scale(scale: Any) -> Tuple[float, float]:
    """``(small, large)`` as a tuple of floats; ``ValueError`` naming ``object_scale`` unless it is a pair
    of numbers in (0, 1] with small < large (a list or a ``"0.6,0.95"`` string is accepted)."""
    if isinstance(scale, str):
        try:
            scale = [float(v) for v in scale.split(",")]
        except ValueError:
            raise ValueError(f"object_scale must be a pair (small, large) of numbers, got {scale!r}") from None
    if not isinstance(scale, (list, tuple)) or len(scale) != 2:
        raise ValueError(f"object_scale must be a pair (small, large) of fractions of a cell side in (0, 1], "
                         f"got {scale!r}")
    for name, value in zip(("small", "large"), scale):
        check_range(f"object_scale ({name})", value, 0.0, 1.0, low_open=True)
    small, large = (float(v) for v in scale)
    if not small < large:
        raise ValueError(f"object_scale must be (small, large) with small < large, got {list(scale)}")
    return small, large


def check_text_scale(scale: Any) -> float:
    """``scale`` as a float; ``ValueError`` naming ``text_scale`` unless it is in ``vocab.TEXT_SCALE_RANGE``."""
    check_range("text_scale", scale, *TEXT_SCALE_RANGE)
    return float(scale)


@dataclass(frozen=True)
class Layout:
    """The difficulty of the procedural images (validated and normalised on creation).

    Attributes:
        grid: side of the object grid (2 or 3); position answers are ``row_words`` / ``col_words``.
        max_objects: most objects in a scene (1..grid*grid; a scene has 1..max_objects).
        object_scale: ``(small, large)`` object extent as a share of a cell's side, each in (0, 1].
        text_scale: sign font size as a share of the image side (``vocab.TEXT_SCALE_RANGE``).
    """

    grid: int = GRID
    max_objects: int = MAX_OBJECTS
    object_scale: Tuple[float, float] = OBJECT_SCALE
    text_scale: float = TEXT_SCALE

    def __post_init__(self) -> None:
        grid = check_grid(self.grid)
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, (int, np.integer)):
            raise ValueError(f"max_objects must be an integer in [1, {grid * grid}], got {self.max_objects!r}")
        try:
            check_range("max_objects", int(self.max_objects), 1, grid * grid)
        except ValueError as exc:
            raise ValueError(f"{exc} (a grid of {grid} has {grid * grid} cells)") from None
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "max_objects", int(self.max_objects))
        object.__setattr__(self, "object_scale", check_object_scale(self.object_scale))
        object.__setattr__(self, "text_scale", check_text_scale(self.text_scale))

    @property
    def row_words(self) -> Tuple[str, ...]:
        """Vertical position answers, indexed by grid row (``("top", "bottom")`` on a 2x2 grid)."""
        return POSITION_WORDS[self.grid][0]

    @property
    def col_words(self) -> Tuple[str, ...]:
        """Horizontal position answers, indexed by grid column (``("left", "right")`` on a 2x2 grid)."""
        return POSITION_WORDS[self.grid][1]


#: the layout of today's defaults (3x3 grid, up to 4 objects, ``vocab.SIZE_FRACTION``, ``vocab.TEXT_SCALE``)
DEFAULT_LAYOUT = Layout()


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene.

    Attributes:
        shape, colour, size: words from :mod:`toolkit.datasets.vocab`.
        row, col: grid cell (0..grid-1, row 0 at the top, column 0 on the left).
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
    """A background RGB colour and its objects, sorted row-major (by row, then column), on a
    ``grid`` x ``grid`` grid, objects drawn at ``object_scale`` (``(small, large)``) of a cell's side."""

    background: Tuple[int, int, int]
    objects: Tuple[SceneObject, ...]
    grid: int = GRID
    object_scale: Tuple[float, float] = OBJECT_SCALE

    domain = "scenes"

    def to_dict(self) -> Dict[str, Any]:
        """JSON view: ``{"domain": "scenes", "background": [r, g, b], "objects": [{...}, ...], "grid": g,
        "object_scale": [small, large]}``."""
        return {"domain": self.domain, "background": list(self.background),
                "objects": [dict(o.__dict__) for o in self.objects], "grid": self.grid,
                "object_scale": list(self.object_scale)}

    def size_fraction(self, size: str) -> float:
        """Extent of an object of ``size`` ("small" / "large") as a share of a cell's side."""
        return self.object_scale[SIZES.index(size)]


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
        text_scale: font size as a share of the image side (shrunk when the word would not fit).
    """

    word: str
    text_colour: str
    background: str
    background_rgb: Tuple[int, int, int]
    row: int
    dx: float = 0.0
    dy: float = 0.0
    text_scale: float = TEXT_SCALE

    domain = "signs"

    def to_dict(self) -> Dict[str, Any]:
        """JSON view with ``"domain": "signs"``."""
        out = {"domain": self.domain, **asdict(self)}
        out["background_rgb"] = list(self.background_rgb)
        return out


Spec = Union[Scene, Sign]


def _offset(rng: np.random.Generator, limit: float) -> float:
    return round(float(rng.uniform(-limit, limit)), 3)


def sample_scene(rng: np.random.Generator, n_objects: Optional[int] = None,
                 layout: Layout = DEFAULT_LAYOUT) -> Scene:
    """A random scene: light (195..230) or dark (35..70) gray background, 1..``layout.max_objects`` objects
    (or ``n_objects``) in distinct cells of the layout's grid.

    Each object's centre is jittered inside its cell by at most half its free margin.
    """
    grid = layout.grid
    n = int(rng.integers(1, layout.max_objects + 1)) if n_objects is None else n_objects
    level = int(rng.integers(195, 231)) if rng.random() < 0.5 else int(rng.integers(35, 71))
    background = tuple(min(255, max(0, level + int(t))) for t in rng.integers(-3, 4, size=3))
    cells = sorted(int(c) for c in rng.choice(grid * grid, size=n, replace=False))
    objects = []
    for cell in cells:
        index = int(rng.integers(len(SIZES)))
        margin = (1.0 - layout.object_scale[index]) / 2 * 0.5
        objects.append(SceneObject(shape=SHAPES[int(rng.integers(len(SHAPES)))],
                                   colour=COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))], size=SIZES[index],
                                   row=cell // grid, col=cell % grid,
                                   dx=_offset(rng, margin), dy=_offset(rng, margin)))
    return Scene(background, tuple(objects), grid=grid, object_scale=layout.object_scale)


def sample_sign(rng: np.random.Generator) -> Sign:
    """A random sign: a word, a text colour, a legible background for it, a third of the image, jitter.

    Its ``text_scale`` is the default; :func:`apply_layout` sets a layout's (the draws do not depend on it).
    """
    text_colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]  # uniform, so text_colour answers balance
    backgrounds = [b for t, b in SIGN_PAIRS if t == text_colour]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    base = np.asarray(SIGN_BACKGROUNDS[background])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-10, 11, size=3), 0, 255))
    return Sign(word=WORDS[int(rng.integers(len(WORDS)))], text_colour=text_colour, background=background,
                background_rgb=rgb, row=int(rng.integers(3)), dx=_offset(rng, 1.0), dy=_offset(rng, 1.0))


def apply_layout(spec: Spec, layout: Layout) -> Spec:
    """``spec`` with the layout's rendering values that are not drawn at random (a sign's ``text_scale``)."""
    if isinstance(spec, Sign) and spec.text_scale != layout.text_scale:
        return replace(spec, text_scale=layout.text_scale)
    return spec


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """Rebuild a :class:`Scene` or :class:`Sign` from its ``to_dict()`` view (layout keys missing from older
    views take the defaults)."""
    fields = {k: v for k, v in data.items() if k != "domain"}
    if data.get("domain") == "scenes":
        return Scene(tuple(fields["background"]), tuple(SceneObject(**o) for o in fields["objects"]),
                     grid=int(fields.get("grid", GRID)),
                     object_scale=tuple(float(v) for v in fields.get("object_scale", OBJECT_SCALE)))
    if data.get("domain") == "signs":
        fields["background_rgb"] = tuple(fields["background_rgb"])
        return Sign(**fields)
    raise ValueError(f"scene spec: unknown domain {data.get('domain')!r}")
