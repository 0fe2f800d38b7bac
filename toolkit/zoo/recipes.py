"""Recipes of the pretrained tiny model zoo: architecture, pretraining data and schedule.

A zoo model is a tiny random-initialised LVLM of a real transformers family
(:mod:`toolkit.surrogates.tiny`) that is then *pretrained* on a task mix that is
disjoint from the downstream (protected) task: ``scenes_pretrain`` questions of
:mod:`toolkit.datasets` (captions, object size, text colour, the shape in a named
cell, the first / last letter of a written word), while the downstream ``scenes``
task asks colour / shape / count / position / existence / read-the-word questions. So a zoo model arrives at the downstream data with
visual and language priors, as a real LVLM does, and an attacker adapts it with
LoRA, as in the MMGuard paper's setting.

Every field below is an argument of the build, so a recipe is data: its hash
names the cache folder of a model built on demand, and the model card written
next to the weights records it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..datasets import ANSWER_SKILL_TYPES, PRETRAIN_TYPES, SKILL_TYPES

__all__ = ["ZooRecipe", "ZOO", "register_zoo", "recipe_hash", "DOWNSTREAM", "LAYOUT", "ZOO_PRETRAIN_TYPES",
           "ZOO_ANSWER_PRETRAIN_TYPES", "TOKENIZER_CORPUS"]


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is built.

    Attributes:
        name: zoo name (``llava-a``); the folder a user passes as ``--surrogate``.
        family: tiny builder family (``llava``, ``qwen2_vl``, ``gemma3``).
        arch: builder keyword arguments (sizes, image size, vocabulary size).
        seed: weight-initialisation seed of the random model.
        data: pretraining dataset config (``name`` + its config; a registered
            :data:`toolkit.datasets.DATASETS` entry).
        train: :class:`toolkit.attacks.FineTune` config of the pretraining run
            (``mode`` full).
        summary: one line for ``mmguard zoo list``.
        vision: settings of the dense visual pretraining stage run before ``train``
            (:class:`toolkit.zoo.vision.VisionStage` keys; empty: no such stage).
    """

    name: str
    family: str
    arch: Dict[str, Any]
    seed: int
    data: Dict[str, Any]
    train: Dict[str, Any]
    summary: str = ""
    vision: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON view (model cards, cache keys); ``vision`` only when set, so recipes without the stage
        keep the hash they were built under."""
        out = dataclasses.asdict(self)
        if not out["vision"]:
            del out["vision"]
        return out


def recipe_hash(recipe: ZooRecipe) -> str:
    """Short content hash of a recipe (names its on-demand cache folder)."""
    text = json.dumps(recipe.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


#: name -> recipe of every zoo model
ZOO: Dict[str, ZooRecipe] = {}


def register_zoo(recipe: ZooRecipe) -> ZooRecipe:
    """Add ``recipe`` to :data:`ZOO` (names are unique)."""
    if recipe.name in ZOO:
        raise ValueError(f"zoo model {recipe.name!r} is already registered")
    ZOO[recipe.name] = recipe
    return recipe


#: scene layout of the zoo's pretraining data and of its downstream task: a 2 x 2 grid with at most
#: two large objects, signs with 24 px words at 48 px. Measured: at the default 3 x 3 layout
#: (objects 7-13 px) and 14 px words, tiny ViTs trained for minutes learn neither shapes nor words
#: (docs/results/testbed-probes.md).
LAYOUT: Dict[str, Any] = {"grid": 2, "max_objects": 2, "object_scale": [0.6, 0.95], "text_scale": 0.5}
#: question types the zoo pretrains on: the ``scenes_pretrain`` mix (captions, sizes, text colours) and the
#: three skills that ask about shapes and letters in other forms than the downstream questions
ZOO_PRETRAIN_TYPES: Tuple[str, ...] = PRETRAIN_TYPES + SKILL_TYPES
#: the same plus the answer skills (yes/no and number answers to other questions: is the object big, how many
#: corners, how many letters), so a model arrives able to *say* the downstream task's answer words
ZOO_ANSWER_PRETRAIN_TYPES: Tuple[str, ...] = ZOO_PRETRAIN_TYPES + ANSWER_SKILL_TYPES
#: the downstream task the zoo is meant to meet (question types never used in pretraining)
DOWNSTREAM: Dict[str, Any] = {"name": "scenes", "image_size": 48, **LAYOUT}
#: datasets whose questions and answers train the zoo tokenizers (so task words are single tokens)
TOKENIZER_CORPUS: Tuple[str, ...] = ("scenes", "scenes_pretrain")
