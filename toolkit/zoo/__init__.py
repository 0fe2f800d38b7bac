"""The pretrained tiny model zoo: small LVLMs of real families with visual and language priors.

See :mod:`toolkit.zoo.recipes` for what a zoo model is and :mod:`toolkit.zoo.build`
for building and locating one. ``mmguard zoo list`` / ``mmguard zoo build``.
"""
from .recipes import DOWNSTREAM, LAYOUT, ZOO_ANSWER_PRETRAIN_TYPES, ZOO_PRETRAIN_TYPES, ZOO, ZooRecipe, recipe_hash, register_zoo
from .build import (CARD, build_zoo_model, cache_root, packaged_folder, read_card, score_by_type, tokenizer_corpus,
                    zoo_folder)
from . import models  # noqa: F401  (registers the zoo's recipes)

__all__ = ["ZOO", "ZooRecipe", "register_zoo", "recipe_hash", "DOWNSTREAM", "LAYOUT", "ZOO_PRETRAIN_TYPES", "ZOO_ANSWER_PRETRAIN_TYPES",
           "build_zoo_model", "zoo_folder", "packaged_folder", "cache_root", "read_card", "score_by_type",
           "tokenizer_corpus", "CARD"]
