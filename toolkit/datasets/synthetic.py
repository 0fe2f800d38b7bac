"""Procedural VQA task family (shapes on a grid, words on signs), built offline and deterministically.

:class:`SyntheticVQA` draws each sample's question type uniformly from its
configured ``types`` (the domain follows the type), samples a scene or sign
spec, asks a question about it with :func:`toolkit.datasets.grammar.ask`
(re-drawing specs that cannot support the question), renders it, and keeps it
unless its image is already in the train split (for test samples) or the
same (image, question) pair was already drawn. All randomness comes from
``numpy.random.default_rng`` streams derived from ``(seed, stream)``.

The difficulty (``grid``, ``max_objects``, ``object_scale``, ``text_scale``) is
part of the config and reaches the sampler, renderer and grammar as a
:class:`~toolkit.datasets.scene.Layout`; the defaults give exactly the data of
the fixed 3x3 layout this module had before those keys existed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Set, Tuple

import numpy as np

from ..data import VQADataset, VQASample
from ..registry import Config, check_range, make_config
from .grammar import DOMAINS, TYPES, Question, answer_sets, answer_words, ask
from .render import MAX_SIZE, MIN_SIZE, render_spec
from .scene import DEFAULT_LAYOUT, Layout, Spec, apply_layout, check_object_scale, sample_scene, sample_sign
from .vocab import GRID, MAX_OBJECTS, OBJECT_SCALE, TEXT_SCALE

__all__ = ["SyntheticVQA", "Scenes", "ScenesPretrain", "DOWNSTREAM_TYPES", "PRETRAIN_TYPES", "SKILL_TYPES", "ANSWER_SKILL_TYPES",
           "REFERENCE_SKILL_TYPES", "RELATION_SKILL_TYPES", "VERIFY_SKILL_TYPES",
           "COUNT_SKILL_TYPES", "draw_item", "image_digest"]

#: the downstream task's question types
DOWNSTREAM_TYPES: Tuple[str, ...] = ("colour", "shape", "count", "position", "exist", "read")
#: the pretraining mix: question types disjoint from the downstream task's
PRETRAIN_TYPES: Tuple[str, ...] = ("caption", "size", "text_colour")
#: opt-in pretraining skills, disjoint from the downstream types: shape recognition asked by grid cell
#: (``shape_at``: "What shape is in the top left corner?", unlike the downstream ``shape``, which refers to
#: an object by its colour/size) and glyph recognition asked letter by letter (``first_letter`` /
#: ``last_letter``, unlike the downstream ``read``, which asks for the whole word); not in any default
#: ``types``, e.g. ``DATASETS.create("scenes_pretrain", types=PRETRAIN_TYPES + SKILL_TYPES)``
SKILL_TYPES: Tuple[str, ...] = ("shape_at", "first_letter", "last_letter")
#: opt-in pretraining skills whose answers are the downstream task's answer words that the other pretraining
#: types never produce: yes / no (``size_check``: "Is the red circle large?") and number words (``corners``:
#: "How many corners does the red object have?", ``letter_count``: "How many letters does the word have?")
ANSWER_SKILL_TYPES: Tuple[str, ...] = ("size_check", "corners", "letter_count")
#: opt-in pretraining skills that practise what the downstream ``exist`` and ``count`` questions need without
#: asking them: ``size_verify`` ("Is the red circle large?" where there may be no red circle: "no") checks a
#: colour / shape conjunction for presence, ``size_count`` ("How many of the objects are large?") counts the
#: objects of one category, by size, an attribute the downstream task never asks about
REFERENCE_SKILL_TYPES: Tuple[str, ...] = ("size_verify", "size_count")
#: opt-in pretraining skills that tie objects to places without the downstream ``position`` / ``exist`` words:
#: ``place_check`` ("Is the red circle in the top left corner?", yes / no) binds a referent to a grid cell,
#: ``occupied`` ("Is there anything in the top left corner?", yes / no) checks a cell for presence
RELATION_SKILL_TYPES: Tuple[str, ...] = ("place_check", "occupied")
#: opt-in pretraining skills that verify a colour or a shape of a referent that may be missing
#: (``colour_verify``: "Is the circle red?", ``shape_verify``: "Is the red object a circle?"; no such referent:
#: "no"): the colour / shape conjunction the downstream ``exist`` questions check, asked of one object
VERIFY_SKILL_TYPES: Tuple[str, ...] = ("colour_verify", "shape_verify")
#: opt-in pretraining skills that count within a colour / shape category without the downstream ``count``
#: question: ``sized_count`` ("How many of the red things are large?") filters by the category and counts by size,
#: ``other_count`` ("How many objects are not circles?") counts the category's complement
COUNT_SKILL_TYPES: Tuple[str, ...] = ("sized_count", "other_count")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    check_range(name, int(value), low, high)


def image_digest(image: np.ndarray) -> bytes:
    """A 16-byte hash of an image's shape and pixel bytes (to detect identical images)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


def draw_item(qtype: str, rng: np.random.Generator, max_tries: int = 1000,
              layout: Layout = DEFAULT_LAYOUT) -> Tuple[Spec, Question]:
    """Sample a spec of a domain of ``qtype`` on ``layout`` and a question about it (re-drawing unsupported
    specs)."""
    domains = DOMAINS[qtype]
    for _ in range(max_tries):
        domain = domains[int(rng.integers(len(domains)))]
        spec = sample_scene(rng, layout=layout) if domain == "scenes" else apply_layout(sample_sign(rng), layout)
        question = ask(qtype, spec, rng)
        if question is not None:
            return spec, question
    raise RuntimeError(f"could not draw a {qtype!r} question in {max_tries} tries")


class SyntheticVQA:
    """Base of the procedural VQA tasks: ``build() -> (train, test)`` of :class:`~toolkit.data.VQADataset`.

    Config (keyword-only): ``n_train`` / ``n_test`` (samples per split), ``image_size`` (pixels,
    32..64), ``seed`` (>= 0), ``types`` (question types, a non-empty tuple of distinct names
    from ``toolkit.datasets.grammar.TYPES``; a comma-separated string is accepted), and the
    difficulty: ``grid`` (2 or 3: a 2x2 grid answers left/right and top/bottom), ``max_objects``
    (1..grid*grid), ``object_scale`` (``(small, large)`` object extent as a share of a cell's side,
    each in (0, 1], small < large; a list is accepted), ``text_scale`` (sign font size as a share of
    the image side, 0.15..0.6).
    """

    #: second word of the seed sequence, so that two tasks with one seed still draw different data
    stream = 0

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """Sizes, image side, seed and question types of a procedural task (validated on creation)."""

        n_train: int = 4000
        n_test: int = 1000
        image_size: int = 48
        seed: int = 0
        types: Tuple[str, ...] = DOWNSTREAM_TYPES
        grid: int = GRID
        max_objects: int = MAX_OBJECTS
        object_scale: Tuple[float, float] = OBJECT_SCALE
        text_scale: float = TEXT_SCALE

        def __post_init__(self) -> None:
            _check_int("n_train", self.n_train, 1, 10_000_000)
            _check_int("n_test", self.n_test, 1, 10_000_000)
            _check_int("image_size", self.image_size, MIN_SIZE, MAX_SIZE)
            _check_int("seed", self.seed, 0, 2 ** 63 - 1)
            types = self.types
            if isinstance(types, str):
                types = tuple(t.strip() for t in types.split(",") if t.strip())
            if not isinstance(types, (list, tuple)) or not types:
                raise ValueError(f"types must be a non-empty list of question types from {list(TYPES)}, "
                                 f"got {self.types!r}")
            bad = [t for t in types if t not in TYPES]
            if bad:
                raise ValueError(f"types: unknown question type(s) {bad}; known: {list(TYPES)}")
            if len(set(types)) != len(types):
                raise ValueError(f"types must not repeat a type, got {list(types)}")
            object.__setattr__(self, "types", tuple(types))
            object.__setattr__(self, "object_scale", check_object_scale(self.object_scale))
            layout = Layout(grid=self.grid, max_objects=self.max_objects, object_scale=self.object_scale,
                            text_scale=self.text_scale)  # validates grid, max_objects, text_scale
            for key in ("grid", "max_objects", "text_scale"):
                object.__setattr__(self, key, getattr(layout, key))

        @property
        def layout(self) -> Layout:
            """The difficulty part of the config, as passed to the sampler, renderer and grammar."""
            return Layout(grid=self.grid, max_objects=self.max_objects, object_scale=self.object_scale,
                          text_scale=self.text_scale)

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, getattr(type(self), "name", type(self).__name__), config)

    def answer_words(self, types: Any = None) -> Tuple[str, ...]:
        """Sorted possible one-word answers of ``types`` (default: this config's types) under this config's
        layout (e.g. no "middle"/"center" on a 2x2 grid, counts up to ``max_objects``)."""
        return answer_words(self.config.types if types is None else types, self.config.layout)

    def answer_sets(self) -> Dict[str, Tuple[str, ...]]:
        """The closed answer set of each one-word type of this config's types under its layout."""
        sets = answer_sets(self.config.layout)
        return {t: sets[t] for t in self.config.types if t in sets}

    @property
    def label(self) -> str:
        """The registered name (the prefix of sample ids and dataset names)."""
        return getattr(type(self), "name", type(self).__name__.lower())

    def _split(self, split: str, n: int, rng: np.random.Generator,
               forbidden: FrozenSet[bytes]) -> Tuple[List[VQASample], Set[bytes]]:
        cfg = self.config
        layout = cfg.layout
        samples: List[VQASample] = []
        images: Set[bytes] = set()
        pairs: Set[Tuple[bytes, str]] = set()
        budget = 50 * n + 1000
        while len(samples) < n:
            budget -= 1
            if budget < 0:
                raise RuntimeError(f"{self.label}: could not draw {n} distinct {split} samples "
                                   f"(got {len(samples)}); lower n_{split} or add types")
            qtype = cfg.types[int(rng.integers(len(cfg.types)))]
            spec, question = draw_item(qtype, rng, layout=layout)
            image = render_spec(spec, cfg.image_size)
            digest = image_digest(image)
            if digest in forbidden or (digest, question.text) in pairs:
                continue
            pairs.add((digest, question.text))
            images.add(digest)
            meta: Dict[str, Any] = {"split": split, "qtype": qtype, "template": question.template,
                                    "domain": spec.domain, "scene": spec.to_dict(), "query": question.query,
                                    "style": question.style}
            samples.append(VQASample(f"{self.label}-{split}-{len(samples):06d}", image, question.text,
                                     question.answer, meta=meta))
        return samples, images

    def build(self) -> Tuple[VQADataset, VQADataset]:
        """Generate ``(train, test)``: disjoint images, deterministic for a given config."""
        cfg = self.config
        train_rng, test_rng = (np.random.default_rng(s)
                               for s in np.random.SeedSequence([int(cfg.seed), self.stream]).spawn(2))
        train, train_images = self._split("train", cfg.n_train, train_rng, frozenset())
        test, _ = self._split("test", cfg.n_test, test_rng, frozenset(train_images))
        return VQADataset(train, f"{self.label}-train"), VQADataset(test, f"{self.label}-test")


class Scenes(SyntheticVQA):
    """Downstream procedural VQA: colour, shape, count, position and existence of shapes; reading signs."""

    stream = 0

    @dataclass(frozen=True, kw_only=True)
    class Config(SyntheticVQA.Config):
        """``SyntheticVQA.Config`` with the downstream types and seed 0."""

        seed: int = 0
        types: Tuple[str, ...] = DOWNSTREAM_TYPES


class ScenesPretrain(SyntheticVQA):
    """Pretraining mix on the same generator: captions, object sizes, sign text colours (disjoint types);
    ``SKILL_TYPES`` (shape by grid cell, first / last letter of a sign's word) can be added to ``types``."""

    stream = 1

    @dataclass(frozen=True, kw_only=True)
    class Config(SyntheticVQA.Config):
        """``SyntheticVQA.Config`` with the pretraining types and seed 1."""

        seed: int = 1
        types: Tuple[str, ...] = PRETRAIN_TYPES
