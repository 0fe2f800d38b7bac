"""Question grammar of the procedural VQA tasks: stems, paraphrase slots, answers computed from the spec.

A question is built in layers, each drawn from the generator:

1. a *stem* of its type (``STEMS[qtype][i]``, the template id ``"qtype.i"``) with slots
   for the thing asked about (``{ref}`` "small red circle", ``{things}``, ``{a_cs}``, ...);
2. synonyms (``{colour}`` colour/color, ``{picture}`` picture/image/photo, ``{written}``
   written/shown/printed, object nouns object/item/thing/shape);
3. an optional place modifier for stems that have a ``{where}`` slot: none, after the
   clause ("... the circle in the picture?") or fronted ("In the picture, what ...?");
4. an optional politeness prefix (``PREFIXES``) and answer-format suffix (``SUFFIXES``;
   ``CAPTION_SUFFIXES`` for captions).

Objects are referred to only by attribute combinations that pick out exactly one
object of the scene, and never by the attribute the question asks about. Every
answer is one lowercase word or letter (``ANSWER_WORDS`` on the default layout,
:func:`answer_sets` for another one), except ``caption`` (a phrase, meant for
pretraining).

``shape_at`` refers to an object by its grid cell instead (:func:`cell_place`: "in the top left
corner", "in the middle of the top row", "in the center"), and ``first_letter`` / ``last_letter``
ask for one letter of a sign's word: pretraining skills (shape and glyph recognition) asked in
another form than the downstream ``shape`` and ``read`` types. The verify types (``size_verify``,
``colour_verify``, ``shape_verify``) are the exceptions to "exactly one object": they may name a colour / shape
that no object has (answer "no"), so that pretraining practises checking for presence without asking the
downstream ``exist`` question. ``sized_count`` / ``other_count`` name a colour or shape category, possibly absent, as the
downstream ``count`` does, but count it by size or count its complement.

Position stems offer the options of the scene's grid (``{cols}`` "left, center or
right" / "left or right", ``{col_places}`` "on the left, in the center or on the
right", ``{rows}``, ``{row_places}``), and position answers and captions use the
grid's words (:data:`toolkit.datasets.vocab.POSITION_WORDS`).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .scene import DEFAULT_LAYOUT, Layout, Scene, SceneObject, Sign, Spec
from .vocab import (COUNT_WORDS, COLOUR_NAMES, PLACE_PHRASES, POSITION_WORDS, SHAPE_PLURALS, SHAPES,
                    SIGN_ROW_PHRASES, SIZES, WORDS)

__all__ = [
    "QA_TYPES", "TYPES", "DOMAINS", "CORNERS", "STEMS", "PREFIXES", "SUFFIXES", "CAPTION_SUFFIXES", "POSITION_AXES",
    "COLOUR_NOUNS", "PICTURE_NOUNS", "OBJECT_NOUNS", "WRITTEN_VERBS", "WHERE_PHRASES", "REFERENCES",
    "ANSWER_WORDS", "FIRST_LETTERS", "LAST_LETTERS", "CELL_PLACES", "Question", "ask", "caption", "cell_phrase",
    "cell_place", "position_options", "answer_sets", "answer_words", "vocabulary",
]

#: question types with a one-word answer
QA_TYPES: Tuple[str, ...] = ("colour", "shape", "count", "position", "exist", "read", "size", "text_colour",
                             "shape_at", "first_letter", "last_letter", "size_check", "corners", "letter_count",
                             "size_verify", "size_count", "place_check", "occupied", "colour_verify", "shape_verify",
                             "sized_count", "other_count")
#: every question type (``caption`` answers with a phrase)
TYPES: Tuple[str, ...] = QA_TYPES + ("caption",)
#: the visual domain(s) a type is asked on
DOMAINS: Dict[str, Tuple[str, ...]] = {
    **{t: ("scenes",) for t in ("colour", "shape", "count", "position", "exist", "size", "shape_at", "size_check",
                                "corners", "size_verify", "size_count", "place_check", "occupied", "colour_verify",
                                "shape_verify", "sized_count", "other_count")},
    **{t: ("signs",) for t in ("read", "text_colour", "first_letter", "last_letter", "letter_count")},
    "caption": ("scenes", "signs"),
}

#: answers of ``corners`` questions (how many corners each shape has)
CORNERS: Dict[str, str] = {"circle": "zero", "square": "four", "triangle": "three", "diamond": "four"}
#: answers of ``first_letter`` / ``last_letter``: the first / last letters of the sign words
FIRST_LETTERS: Tuple[str, ...] = tuple(sorted({w[0] for w in WORDS}))
LAST_LETTERS: Tuple[str, ...] = tuple(sorted({w[-1] for w in WORDS}))
# a one-letter answer "a" would be erased by answer normalisation (it drops the articles a / an / the)
if "a" in FIRST_LETTERS + LAST_LETTERS:
    raise AssertionError("a sign word starts or ends with 'a': its letter answer would not survive "
                         "toolkit.metrics.accuracy.normalize_answer; change vocab.WORDS")

#: where each cell of a ``grid`` x ``grid`` grid is, for ``shape_at`` questions (``CELL_PLACES[grid][row][col]``)
CELL_PLACES: Dict[int, Tuple[Tuple[str, ...], ...]] = {
    2: (("in the top left corner", "in the top right corner"),
        ("in the bottom left corner", "in the bottom right corner")),
    3: (("in the top left corner", "in the middle of the top row", "in the top right corner"),
        ("in the middle of the left column", "in the center", "in the middle of the right column"),
        ("in the bottom left corner", "in the middle of the bottom row", "in the bottom right corner")),
}

COLOUR_NOUNS: Tuple[str, ...] = ("colour", "color")
PICTURE_NOUNS: Tuple[str, ...] = ("picture", "image", "photo")
OBJECT_NOUNS: Tuple[str, ...] = ("object", "item", "thing", "shape")
WRITTEN_VERBS: Tuple[str, ...] = ("written", "shown", "printed")
#: the optional place modifier of stems with a ``{where}`` slot (after the clause, or fronted)
WHERE_PHRASES: Tuple[str, ...] = ("in the {picture}", "in this {picture}")

PREFIXES: Tuple[str, ...] = ("", "Please tell me:", "Quick question:", "Look at the {picture}.", "Can you help?",
                             "Here is a question.")
SUFFIXES: Tuple[str, ...] = ("", "Answer with one word.", "Reply in a single word.", "Be brief.",
                             "One word, please.")
CAPTION_SUFFIXES: Tuple[str, ...] = ("", "Be brief.", "Keep it short.", "Use one sentence.")

#: paraphrased stems of each type; the template id of ``STEMS[t][i]`` is ``f"{t}.{i}"``
STEMS: Dict[str, List[str]] = {
    "colour": [
        "What {colour} is the {ref}{where}?",
        "Which {colour} does the {ref} have{where}?",
        "What is the {colour} of the {ref}{where}?",
        "Tell me the {colour} of the {ref}{where}.",
        "Name the {colour} of the {ref}{where}.",
        "In which {colour} is the {ref} drawn{where}?",
    ],
    "shape": [
        "What shape is the {ref}{where}?",
        "Which shape does the {ref} have{where}?",
        "What is the shape of the {ref}{where}?",
        "Name the shape of the {ref}{where}.",
        "What kind of shape is the {ref}{where}?",
        "Tell me the shape of the {ref}{where}.",
    ],
    "count": [
        "How many {things} are there{where}?",
        "How many {things} can you see{where}?",
        "Count the {things}{where}.",
        "What is the number of {things}{where}?",
        "How many {things} are shown{where}?",
        "Tell me how many {things} there are{where}.",
    ],
    "position": [
        "Is the {ref} {col_places}{where}?",
        "Where is the {ref} horizontally{where}?",
        "In which column is the {ref}: {cols}?",
        "Is the {ref} {cols}{where}?",
        "On which side of the {picture} is the {ref}: {cols}?",
        "Is the {ref} {row_places}{where}?",
        "Where is the {ref} vertically{where}?",
        "In which row is the {ref}: {rows}?",
        "Is the {ref} {rows}{where}?",
        "How high up in the {picture} is the {ref}: {rows}?",
    ],
    "exist": [
        "Is there {a_cs}{where}?",
        "Can you see {a_cs}{where}?",
        "Does the {picture} contain {a_cs}?",
        "Is {a_cs} visible{where}?",
        "Do you see any {cs_plural}{where}?",
        "Is there any {cs}{where}?",
        "Does the {picture} show {a_cs}?",
    ],
    "read": [
        "What word is {written} on the sign?",
        "What does the sign say?",
        "Which word is {written}{where}?",
        "Read the word{where}.",
        "What is the word{where}?",
        "What text is {written}{where}?",
        "What word can you read{where}?",
    ],
    "size": [
        "Is the {ref} large or small{where}?",
        "Is the {ref} small or large{where}?",
        "What size is the {ref}{where}, large or small?",
        "How big is the {ref}{where}: large or small?",
        "Would you call the {ref}{where} large or small?",
        "Is the {ref}{where} a large or a small one?",
    ],
    "text_colour": [
        "What {colour} is the text{where}?",
        "What {colour} are the letters{where}?",
        "In which {colour} is the word {written}{where}?",
        "What is the {colour} of the writing{where}?",
        "Name the {colour} of the letters{where}.",
        "What {colour} is the word on the sign?",
    ],
    "shape_at": [
        "What shape is {at}?",
        "Which shape is {at} of the {picture}?",
        "What is the shape of the {thing} {at}?",
        "Name the shape {at}.",
        "What kind of shape do you see {at}?",
        "Tell me the shape of the {thing} {at} of the {picture}.",
    ],
    "first_letter": [
        "What is the first letter of the word{where}?",
        "Which letter does the {written} word start with?",
        "What letter does the word on the sign begin with?",
        "Name the first letter of the word {written}{where}.",
        "What is the initial letter of the word on the sign?",
        "Tell me the first letter of the {written} word.",
    ],
    "last_letter": [
        "What is the last letter of the word{where}?",
        "Which letter does the {written} word end with?",
        "What letter does the word on the sign end in?",
        "Name the last letter of the word {written}{where}.",
        "What is the final letter of the word on the sign?",
        "Tell me the last letter of the {written} word.",
    ],
    "size_check": [
        "Is the {ref} {size}{where}?",
        "Would you say the {ref} is {size}{where}?",
        "Is the {ref}{where} a {size} one?",
        "Does the {ref} look {size}{where}?",
        "Tell me whether the {ref} is {size}{where}.",
    ],
    "corners": [
        "How many corners does the {ref} have{where}?",
        "How many corners has the {ref}{where}?",
        "Count the corners of the {ref}{where}.",
        "What is the number of corners of the {ref}{where}?",
        "Tell me how many corners the {ref} has{where}.",
    ],
    # size as a predicate ("are large"), a form the downstream count stems never use
    "size_count": [
        "How many of the {things} are {size}{where}?",
        "How many {things} are {size} ones{where}?",
        "Of the {things}{where}, how many are {size}?",
        "Count how many {things} are {size}{where}.",
        "Tell me how many of the {things} are {size}{where}.",
    ],
    # a referent bound to a grid cell, answered yes / no (the downstream position questions name a side and are
    # answered with it)
    "place_check": [
        "Is the {ref} {at}?",
        "Would you find the {ref} {at}?",
        "Is the {ref} located {at}?",
        "Tell me whether the {ref} is {at}.",
        "Does the {ref} sit {at}?",
    ],
    # presence by grid cell, answered yes / no (the downstream existence questions name a colour and a shape)
    "occupied": [
        "Is there anything {at}?",
        "Is any {thing} {at}?",
        "Does the {picture} have {a_thing} {at}?",
        "Is something drawn {at}?",
        "Tell me whether there is {a_thing} {at}.",
    ],
    # an attribute of a referent that may be missing, answered yes / no ("Is the circle red?"; no circle: "no"):
    # the colour / shape conjunction the downstream existence questions check, asked as a predicate of one
    # object (the downstream colour / shape questions ask for the attribute, existence asks "is there ...")
    "colour_verify": [
        "Is the {ref} {value}{where}?",
        "Would you say the {ref} is {value}{where}?",
        "Is the {ref}{where} drawn in {value}?",
        "Does the {ref} look {value}{where}?",
        "Tell me whether the {ref} is {value}{where}.",
    ],
    "shape_verify": [
        "Is the {ref} a {value}{where}?",
        "Would you call the {ref} a {value}{where}?",
        "Is the {ref}{where} shaped like a {value}?",
        "Does the {ref} have the form of a {value}{where}?",
        "Tell me whether the {ref} is a {value}{where}.",
    ],
    # counts within a colour / shape category, by size ("How many of the red things are large?"): the category
    # filter the downstream count questions apply, with a size predicate they never use
    "sized_count": [
        "Among the {things}{where}, how many are {size}?",
        "How many of the {things} look {size}{where}?",
        "Of all the {things}{where}, count the {size} ones.",
        "How many of the {things}{where} would you call {size}?",
        "Tell me how many of the {things} are drawn {size}{where}.",
    ],
    # counts the complement of a colour / shape category ("How many objects are not red?"): the downstream count
    # questions count the category itself
    "other_count": [
        "How many {things} are not {value}{where}?",
        "How many of the {things}{where} are not {value}?",
        "Count the {things} that are not {value}{where}.",
        "Tell me how many {things} are not {value}{where}.",
        "How many {things}{where} are anything but {value}?",
    ],
    "letter_count": [
        "How many letters does the word{where} have?",
        "How many letters are in the word on the sign?",
        "Count the letters of the {written} word.",
        "What is the number of letters in the word{where}?",
        "Tell me how many letters the {written} word has.",
    ],
    "caption": [
        "Describe the {picture}.",
        "What is in the {picture}?",
        "What do you see in the {picture}?",
        "Give a short description of the {picture}.",
        "Write a caption for the {picture}.",
        "Describe what is shown.",
    ],
}
#: ``size_verify`` asks in ``size_check``'s words; only its referents differ (they may be missing: answer "no")
STEMS["size_verify"] = STEMS["size_check"]
#: the axis each ``position`` stem asks about (answers the grid's column words or row words)
POSITION_AXES: Tuple[str, ...] = ("horizontal",) * 5 + ("vertical",) * 5

#: attribute combinations that may refer to an object, per type (never the attribute asked about)
REFERENCES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "colour": (("shape",), ("size", "shape")),
    "shape": (("colour",), ("size", "colour")),
    "size": (("shape",), ("colour",), ("colour", "shape")),
    "size_check": (("shape",), ("colour",), ("colour", "shape")),
    "corners": (("colour",), ("size", "colour")),
    "position": (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour"),
                 ("size", "colour", "shape")),
}
REFERENCES["size_verify"] = REFERENCES["size_check"]
REFERENCES["place_check"] = REFERENCES["position"]
REFERENCES["colour_verify"] = (("shape",), ("size", "shape"))
REFERENCES["shape_verify"] = (("colour",), ("size", "colour"))
#: the attribute each verify type asks about (its ``{value}`` slot; ``size_verify`` keeps its ``{size}`` slot)
VERIFIED: Dict[str, str] = {"size_verify": "size", "colour_verify": "colour", "shape_verify": "shape"}
_VALUES: Dict[str, Tuple[str, ...]] = {"size": SIZES, "colour": COLOUR_NAMES, "shape": SHAPES}


def answer_sets(layout: Layout = DEFAULT_LAYOUT) -> Dict[str, Tuple[str, ...]]:
    """The closed answer set of each one-word type on ``layout`` (its grid's position words, counts
    0..``max_objects``)."""
    rows, cols = POSITION_WORDS[layout.grid]
    return {
        "colour": COLOUR_NAMES,
        "shape": SHAPES,
        "count": COUNT_WORDS[:layout.max_objects + 1],
        "position": cols + rows,
        "exist": ("yes", "no"),
        "read": WORDS,
        "size": SIZES,
        "text_colour": COLOUR_NAMES,
        "shape_at": SHAPES,
        "first_letter": FIRST_LETTERS,
        "last_letter": LAST_LETTERS,
        "size_check": ("yes", "no"),
        "corners": tuple(sorted(set(CORNERS.values()), key=COUNT_WORDS.index)),
        "letter_count": tuple(sorted({COUNT_WORDS[len(w)] for w in WORDS}, key=COUNT_WORDS.index)),
        "size_verify": ("yes", "no"),
        "size_count": COUNT_WORDS[:layout.max_objects + 1],
        "place_check": ("yes", "no"),
        "occupied": ("yes", "no"),
        "colour_verify": ("yes", "no"),
        "shape_verify": ("yes", "no"),
        "sized_count": COUNT_WORDS[:layout.max_objects + 1],
        "other_count": COUNT_WORDS[:layout.max_objects + 1],
    }


#: the closed answer set of each one-word type on the default layout (3x3 grid, up to 4 objects)
ANSWER_WORDS: Dict[str, Tuple[str, ...]] = answer_sets()


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def position_options(grid: int) -> Dict[str, str]:
    """The option slots of the position stems on a ``grid`` x ``grid`` grid: ``cols`` ("left, center or
    right"), ``col_places`` ("on the left, in the center or on the right"), ``rows``, ``row_places``."""
    rows, cols = POSITION_WORDS[grid]
    return {"cols": _or_list(cols), "col_places": _or_list([PLACE_PHRASES[w] for w in cols]),
            "rows": _or_list(rows), "row_places": _or_list([PLACE_PHRASES[w] for w in rows])}


def cell_phrase(row: int, col: int, grid: int) -> str:
    """Where a cell of a ``grid`` x ``grid`` grid is, for captions: "at the top left", "at the top" (top
    centre), "on the left" (middle left), "in the center"; on a 2x2 grid always a corner."""
    rows, cols = POSITION_WORDS[grid]
    r, c = rows[row], cols[col]
    if r == "middle":
        return "in the center" if c == "center" else f"on the {c}"
    return f"at the {r}" if c == "center" else f"at the {r} {c}"


def cell_place(row: int, col: int, grid: int) -> str:
    """Where a cell of a ``grid`` x ``grid`` grid is, for ``shape_at`` questions: "in the top left corner",
    "in the middle of the top row", "in the center" (:data:`CELL_PLACES`); on a 2x2 grid always a corner."""
    return CELL_PLACES[grid][row][col]


@dataclass(frozen=True)
class Question:
    """A generated question and its answer.

    Attributes:
        qtype: question type (one of ``TYPES``).
        text: the question sentence.
        answer: one lowercase word (a letter for ``first_letter`` / ``last_letter``, a phrase for
            ``caption``).
        template: stem id ``"qtype.i"`` (``STEMS[qtype][i]``).
        query: what is asked about, JSON (e.g. ``{"ref": {"shape": "circle"}}``, ``{"of": "colour",
            "value": "red"}``, ``{"axis": "vertical", "ref": ...}``, ``{"colour": ..., "shape": ...}``, ``{"row": 0, "col": 1}``).
        style: paraphrase choices, JSON: ``prefix`` / ``suffix`` indices, ``where`` none|after|front.
    """

    qtype: str
    text: str
    answer: str
    template: str
    query: Dict[str, Any] = field(default_factory=dict)
    style: Dict[str, Any] = field(default_factory=dict)


def _pick(options: Sequence[Any], rng: np.random.Generator) -> Any:
    return options[int(rng.integers(len(options)))]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _compose(qtype: str, stem_index: int, slots: Dict[str, str], rng: np.random.Generator,
             suffixes: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
    """Fill a stem's slots and add the modifier, prefix and suffix; returns (text, style)."""
    stem = STEMS[qtype][stem_index]
    picture = _pick(PICTURE_NOUNS, rng)
    words = {"picture": picture, "colour": _pick(COLOUR_NOUNS, rng), "written": _pick(WRITTEN_VERBS, rng),
             "where": "", **slots}
    where = "none"
    if "{where}" in stem:
        where = ("none", "after", "front")[int(rng.integers(3))]
        phrase = _pick(WHERE_PHRASES, rng).format(picture=picture)
        if where == "after":
            words["where"] = " " + phrase
    text = stem.format(**words)
    if where == "front":
        text = phrase[:1].upper() + phrase[1:] + ", " + _lower_first(text)
    p, s = int(rng.integers(len(PREFIXES))), int(rng.integers(len(suffixes)))
    prefix = PREFIXES[p].format(picture=picture)
    if prefix:
        text = prefix + " " + (_lower_first(text) if prefix.endswith(":") else text)
    if suffixes[s]:
        text += " " + suffixes[s]
    return text, {"prefix": p, "suffix": s, "where": where}


def _matches(obj: SceneObject, ref: Dict[str, str]) -> bool:
    return all(getattr(obj, a) == v for a, v in ref.items())


def _pick_reference(objects: Sequence[SceneObject], combos: Iterable[Tuple[str, ...]],
                    rng: np.random.Generator) -> Optional[Tuple[SceneObject, Dict[str, str]]]:
    """A random (object, attribute dict) such that the attributes pick out exactly that object, or None."""
    options = []
    for obj in objects:
        unique = []
        for combo in combos:
            ref = {a: getattr(obj, a) for a in combo}
            if sum(_matches(o, ref) for o in objects) == 1:
                unique.append(ref)
        if unique:
            options.append((obj, unique))
    if not options:
        return None
    obj, unique = _pick(options, rng)
    return obj, _pick(unique, rng)


def _ref_phrase(ref: Dict[str, str], nouns: Sequence[str], rng: np.random.Generator) -> str:
    """"small red circle", "red thing", "large object"-style noun phrase for a reference (no article)."""
    words = [ref[a] for a in ("size", "colour") if a in ref]
    noun = _pick(nouns, rng)
    return " ".join(words + [ref.get("shape", noun)])


def caption(spec: Spec) -> str:
    """A deterministic description: every object row-major ("a large red circle at the top left and ..."),
    or for a sign "the word cake in green on yellow at the top"."""
    if isinstance(spec, Sign):
        return f"the word {spec.word} in {spec.text_colour} on {spec.background} {SIGN_ROW_PHRASES[spec.row]}"
    objects = sorted(spec.objects, key=lambda o: (o.row, o.col))
    return _join([f"a {o.size} {o.colour} {o.shape} {cell_phrase(o.row, o.col, spec.grid)}" for o in objects])


def _ask_verify(qtype: str, objects: Sequence[SceneObject], rng: np.random.Generator):
    """A ``size_verify`` / ``colour_verify`` / ``shape_verify`` question ("Is the red circle large?", "Is the
    circle red?", "Is the red object a circle?"): half "yes" (a present object named by its own value), a quarter
    "no" for another value, a quarter "no" because nothing in the picture fits the named referent at all."""
    attribute = VERIFIED[qtype]
    roll = rng.random()
    if roll < 0.75:
        picked = _pick_reference(objects, REFERENCES[qtype], rng)
        if picked is None:
            return None
        obj, ref = picked
        other = [z for z in _VALUES[attribute] if z != getattr(obj, attribute)]
        asked, answer = (getattr(obj, attribute), "yes") if roll < 0.5 else (_pick(other, rng), "no")
    else:
        combo = _pick(REFERENCES[qtype], rng)
        options = [dict(zip(combo, v)) for v in itertools.product(*(_VALUES[a] for a in combo))]
        missing = [ref for ref in options if not any(_matches(o, ref) for o in objects)]
        if not missing:
            return None
        ref, asked, answer = _pick(missing, rng), _pick(_VALUES[attribute], rng), "no"
    nouns = OBJECT_NOUNS[:3] if attribute == "shape" else OBJECT_NOUNS  # "is the red shape a circle" reads oddly
    slots = {"ref": _ref_phrase(ref, nouns, rng), "size" if attribute == "size" else "value": asked}
    return int(rng.integers(len(STEMS[qtype]))), slots, answer, {"ref": ref, attribute: asked}


def _category_value(objects: Sequence[SceneObject], of: str, rng: np.random.Generator) -> str:
    """A value of the colour or shape category ``of`` for a count question: a present one 60% of the time, else
    any (so an absent one, whose count is zero, can be named)."""
    present = sorted({getattr(o, of) for o in objects})
    return _pick(_VALUES[of] if rng.random() < 0.4 else present, rng)


def _category_phrase(of: str, value: str, noun: str) -> str:
    """"red things" / "circles": the plural noun phrase of a colour or shape category."""
    return f"{value} {noun}s" if of == "colour" else SHAPE_PLURALS[value]


def _ask_category_count(qtype: str, objects: Sequence[SceneObject], rng: np.random.Generator):
    """A ``sized_count`` ("How many of the red things are large?": objects of the category with the asked size)
    or ``other_count`` ("How many objects are not circles?": objects outside the category) question."""
    of = ("colour", "shape")[int(rng.integers(2))]
    value = _category_value(objects, of, rng)
    noun = _pick(OBJECT_NOUNS, rng)
    if qtype == "sized_count":
        size = _pick(SIZES, rng)
        things = _category_phrase(of, value, noun)
        n = sum(getattr(o, of) == value and o.size == size for o in objects)
        slots, query = {"things": things, "size": size}, {"of": of, "value": value, "size": size}
    else:
        shown = value if of == "colour" else SHAPE_PLURALS[value]
        n = sum(getattr(o, of) != value for o in objects)
        slots, query = {"things": noun + "s", "value": shown}, {"of": of, "value": value, "not": True}
    return int(rng.integers(len(STEMS[qtype]))), slots, COUNT_WORDS[n], query


def _ask_cell(qtype: str, scene: Scene, rng: np.random.Generator):
    """A ``place_check`` ("Is the red circle in the top left corner?": half the time its own cell, else another
    cell) or ``occupied`` ("Is there anything in the top left corner?": half the time an occupied cell) question."""
    cells = [(r, c) for r in range(scene.grid) for c in range(scene.grid)]
    taken = [(o.row, o.col) for o in scene.objects]
    if qtype == "place_check":
        picked = _pick_reference(scene.objects, REFERENCES[qtype], rng)
        if picked is None:
            return None
        obj, ref = picked
        if rng.random() < 0.5:
            cell, answer = (obj.row, obj.col), "yes"
        else:
            cell, answer = _pick([x for x in cells if x != (obj.row, obj.col)], rng), "no"
        slots = {"ref": _ref_phrase(ref, OBJECT_NOUNS, rng), "at": cell_place(*cell, scene.grid)}
        query: Dict[str, Any] = {"ref": ref, "row": cell[0], "col": cell[1]}
    else:
        empty = [x for x in cells if x not in taken]
        wanted = taken if rng.random() < 0.5 or not empty else empty
        cell = _pick(wanted, rng)
        answer = "yes" if cell in taken else "no"
        thing = _pick(OBJECT_NOUNS[:3], rng)
        slots = {"at": cell_place(*cell, scene.grid), "thing": thing, "a_thing": _article(thing)}
        query = {"row": cell[0], "col": cell[1]}
    return int(rng.integers(len(STEMS[qtype]))), slots, answer, query


def _ask_scene(qtype: str, scene: Scene, rng: np.random.Generator):
    """(stem index, slots, answer, query) of a scene question, or None when the scene cannot support it."""
    objects = scene.objects
    if qtype in ("size_check", "corners"):  # skills whose answers are yes / no and number words
        picked = _pick_reference(objects, REFERENCES[qtype], rng)
        if picked is None:
            return None
        obj, ref = picked
        slots = {"ref": _ref_phrase(ref, OBJECT_NOUNS, rng)}
        if qtype == "size_check":
            asked = _pick(SIZES, rng)
            slots["size"] = asked
            answer = "yes" if obj.size == asked else "no"
        else:
            answer = CORNERS[obj.shape]
        return int(rng.integers(len(STEMS[qtype]))), slots, answer, {"ref": ref}
    if qtype in VERIFIED:
        return _ask_verify(qtype, objects, rng)
    if qtype in ("place_check", "occupied"):
        return _ask_cell(qtype, scene, rng)
    if qtype in ("sized_count", "other_count"):
        return _ask_category_count(qtype, objects, rng)
    if qtype == "size_count":
        asked = _pick(SIZES, rng)
        n = sum(o.size == asked for o in objects)
        slots = {"things": _pick(OBJECT_NOUNS, rng) + "s", "size": asked}
        return int(rng.integers(len(STEMS[qtype]))), slots, COUNT_WORDS[n], {"of": "size", "value": asked}
    if qtype in ("colour", "shape", "size", "position"):
        picked = _pick_reference(objects, REFERENCES[qtype], rng)
        if picked is None:
            return None
        obj, ref = picked
        nouns = OBJECT_NOUNS[:3] if qtype == "shape" else OBJECT_NOUNS
        slots = {"ref": _ref_phrase(ref, nouns, rng)}
        stem = int(rng.integers(len(STEMS[qtype])))
        query: Dict[str, Any] = {"ref": ref}
        if qtype == "position":
            axis = POSITION_AXES[stem]
            query["axis"] = axis
            rows, cols = POSITION_WORDS[scene.grid]
            answer = cols[obj.col] if axis == "horizontal" else rows[obj.row]
            slots.update(position_options(scene.grid))
        else:
            answer = getattr(obj, qtype)
        return stem, slots, answer, query
    if qtype == "shape_at":  # objects sit in distinct cells, so the cell picks out one object
        obj = _pick(objects, rng)
        slots = {"at": cell_place(obj.row, obj.col, scene.grid), "thing": _pick(OBJECT_NOUNS[:3], rng)}
        return int(rng.integers(len(STEMS["shape_at"]))), slots, obj.shape, {"row": obj.row, "col": obj.col}
    if qtype == "count":
        of = ("total", "colour", "shape")[int(rng.integers(3))]
        noun = _pick(OBJECT_NOUNS, rng)
        if of == "total":
            value, things, n = None, noun + "s", len(objects)
        else:
            value = _category_value(objects, of, rng)  # absent values give "zero"
            things = _category_phrase(of, value, noun)
            n = sum(getattr(o, of) == value for o in objects)
        return int(rng.integers(len(STEMS["count"]))), {"things": things}, COUNT_WORDS[n], \
            {"of": of, "value": value}
    if qtype == "exist":
        present = sorted({(o.colour, o.shape) for o in objects})
        if rng.random() < 0.5:
            colour, shape = _pick(present, rng)
            answer = "yes"
        else:
            absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
            colour, shape = _pick(absent, rng)
            answer = "no"
        cs = f"{colour} {shape}"
        slots = {"cs": cs, "a_cs": _article(cs), "cs_plural": f"{colour} {SHAPE_PLURALS[shape]}"}
        return int(rng.integers(len(STEMS["exist"]))), slots, answer, {"colour": colour, "shape": shape}
    raise ValueError(f"question type {qtype!r} is not asked on scenes")


def ask(qtype: str, spec: Spec, rng: np.random.Generator) -> Optional[Question]:
    """A random question of type ``qtype`` about ``spec`` with its answer, or None if the spec can't support
    one (e.g. no object has a unique reference for a ``colour`` question). Position options and answers
    follow the scene's grid (``spec.grid``)."""
    if qtype not in TYPES:
        raise ValueError(f"unknown question type {qtype!r}; known: {list(TYPES)}")
    if spec.domain not in DOMAINS[qtype]:
        raise ValueError(f"question type {qtype!r} is asked on {DOMAINS[qtype]}, not on {spec.domain!r}")
    suffixes = SUFFIXES
    if qtype == "caption":
        stem, slots, answer, query = int(rng.integers(len(STEMS["caption"]))), {}, caption(spec), {}
        suffixes = CAPTION_SUFFIXES
    elif qtype in ("read", "text_colour", "first_letter", "last_letter", "letter_count"):
        stem, slots, query = int(rng.integers(len(STEMS[qtype]))), {}, {}
        answer = {"read": spec.word, "text_colour": spec.text_colour, "first_letter": spec.word[:1],
                  "last_letter": spec.word[-1:], "letter_count": COUNT_WORDS[len(spec.word)]}[qtype]
    else:
        made = _ask_scene(qtype, spec, rng)
        if made is None:
            return None
        stem, slots, answer, query = made
    text, style = _compose(qtype, stem, slots, rng, suffixes)
    return Question(qtype, text, answer, f"{qtype}.{stem}", query, style)


def answer_words(types: Optional[Iterable[str]] = None, layout: Layout = DEFAULT_LAYOUT) -> Tuple[str, ...]:
    """Sorted union of the possible answers of ``types`` (default: every one-word type) on ``layout``
    (default: the default layout, i.e. ``ANSWER_WORDS``); ``caption`` adds nothing (its answers are open
    phrases)."""
    sets = ANSWER_WORDS if layout == DEFAULT_LAYOUT else answer_sets(layout)
    out = set()
    for t in (QA_TYPES if types is None else types):
        if t not in TYPES:
            raise ValueError(f"unknown question type {t!r}; known: {list(TYPES)}")
        out.update(sets.get(t, ()))
    return tuple(sorted(out))


def vocabulary() -> Tuple[str, ...]:
    """Sorted lowercase words that can occur in any generated question (e.g. to keep triggers out of it)."""
    texts: List[str] = [s for stems in STEMS.values() for s in stems]
    texts += list(PREFIXES) + list(SUFFIXES) + list(CAPTION_SUFFIXES) + list(WHERE_PHRASES)
    texts += list(COLOUR_NOUNS + PICTURE_NOUNS + OBJECT_NOUNS + WRITTEN_VERBS + COLOUR_NAMES + SHAPES + SIZES)
    texts += [text for grid in POSITION_WORDS for text in position_options(grid).values()]
    texts += [place for rows in CELL_PLACES.values() for row in rows for place in row]
    texts += [n + "s" for n in OBJECT_NOUNS] + list(SHAPE_PLURALS.values()) + ["a", "an"]
    words = set()
    for t in texts:
        words.update(re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", t).lower()))
    return tuple(sorted(words))
