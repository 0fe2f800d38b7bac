"""Text normalisers an attacker can run over the questions (from the MMGuard paper's robustness study).

They target inserted text triggers: punctuation removal, case folding and
whitespace normalisation. The answers are never changed.
"""
from __future__ import annotations

import string

from .base import COUNTERMEASURES, Transform

__all__ = ["Punctuation", "Lowercase", "Whitespace"]

_DROP_PUNCT = str.maketrans("", "", string.punctuation)


@COUNTERMEASURES.register("punctuation")
class Punctuation(Transform):
    """Delete ASCII punctuation from the question (a question that would become empty is kept)."""

    def transform_question(self, question: str) -> str:
        stripped = question.translate(_DROP_PUNCT)
        return stripped if stripped.strip() else question


@COUNTERMEASURES.register("lowercase")
class Lowercase(Transform):
    """Fold the question to lower case."""

    def transform_question(self, question: str) -> str:
        return question.lower()


@COUNTERMEASURES.register("whitespace")
class Whitespace(Transform):
    """Collapse runs of whitespace to one space and strip the ends."""

    def transform_question(self, question: str) -> str:
        return " ".join(question.split())
