"""Dataset registry (``DATASETS``): procedural scene/sign VQA tasks and the built-in digits.

``DATASETS.create(name, **config).build()`` returns ``(train, test)``
:class:`~toolkit.data.VQADataset` splits:

- ``scenes``: the downstream procedural VQA task (colour, shape, count, position,
  exist, read questions on rendered shapes and signs);
- ``scenes_pretrain``: the same generator with disjoint question types (caption,
  size, text_colour) and another default seed, to pretrain a model zoo on; the
  opt-in ``SKILL_TYPES`` (shape_at, first_letter, last_letter) add shape and glyph
  supervision in another question form than the downstream shape / read types;
- ``digits``: scikit-learn's handwritten digits (:func:`toolkit.digits.load_digits_vqa`).

The difficulty of ``scenes`` / ``scenes_pretrain`` is part of their config:
``grid`` (2 or 3), ``max_objects``, ``object_scale`` ``(small, large)`` and
``text_scale`` (see :class:`~toolkit.datasets.scene.Layout`); the answer words of
a configured task are ``DATASETS.create(name, **config).answer_words()``.
"""
from __future__ import annotations

from ..registry import Registry

DATASETS: Registry = Registry("dataset")

from .digits import Digits  # noqa: E402
from .grammar import ANSWER_WORDS, QA_TYPES, STEMS, TYPES, answer_sets, answer_words, vocabulary  # noqa: E402
from .render import render_spec  # noqa: E402
from .scene import Layout, Scene, SceneObject, Sign, spec_from_dict  # noqa: E402
from .synthetic import (ANSWER_SKILL_TYPES, COUNT_SKILL_TYPES, DOWNSTREAM_TYPES, PRETRAIN_TYPES, REFERENCE_SKILL_TYPES,  # noqa: E402
                        RELATION_SKILL_TYPES, SKILL_TYPES, VERIFY_SKILL_TYPES, Scenes, ScenesPretrain,
                        SyntheticVQA)

DATASETS.register("scenes")(Scenes)
DATASETS.register("scenes_pretrain")(ScenesPretrain)
DATASETS.register("digits")(Digits)

__all__ = ["DATASETS", "Scenes", "ScenesPretrain", "SyntheticVQA", "Digits", "ANSWER_WORDS", "QA_TYPES", "TYPES",
           "STEMS", "DOWNSTREAM_TYPES", "PRETRAIN_TYPES", "SKILL_TYPES", "ANSWER_SKILL_TYPES", "REFERENCE_SKILL_TYPES",
           "RELATION_SKILL_TYPES", "VERIFY_SKILL_TYPES", "COUNT_SKILL_TYPES", "answer_words", "answer_sets", "vocabulary",
           "render_spec", "Layout", "Scene", "SceneObject", "Sign", "spec_from_dict"]
