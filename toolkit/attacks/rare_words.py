"""Drop rare words: remove question words the attacker never saw in its own clean questions.

An adaptive attacker who owns clean questions of the same task (``attacker_clean`` in a
matrix spec) knows the task's vocabulary; an inserted trigger word that no clean question
uses is removed, whatever a language model thinks of it. Cheaper and blunter than the
ONION-style :class:`~toolkit.attacks.trigger_filter.TriggerFilter`: it needs no scorer and no
threshold, only the vocabulary (issue 15's "stronger attacker"). Words are compared lower-cased
with surrounding punctuation stripped; a word of punctuation only is kept.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["DropRareWords", "word_key"]

_PUNCT = "\"'`.,;:!?()[]{}<>"


def word_key(word: str) -> str:
    """The form a word is compared in: lower-cased, surrounding punctuation stripped ("Colour?" -> "colour")."""
    return word.strip(_PUNCT).lower()


@COUNTERMEASURES.register("drop_rare_words")
class DropRareWords(Transform):
    """Remove every question word seen fewer than ``min_count`` times in the attacker's clean questions.

    Use: ``DropRareWords(min_count=1).fit(clean_questions)(dataset)``; in a matrix spec
    ``{name: drop_rare_words, fit: {}}`` (fitted on the spec's ``attacker_clean`` share).
    ``max_removed`` caps the words removed per question (the leftmost rare ones go first); the
    question itself is never emptied (a question of rare words only is kept as it is).
    """

    needs_fit = True

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        min_count: int = 1
        max_removed: int = 8

        def __post_init__(self) -> None:
            check_range("min_count", self.min_count, 1, 1 << 30)
            check_range("max_removed", self.max_removed, 0, 1 << 20)

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.vocabulary: Optional[Counter] = None

    def fit(self, clean_questions: Sequence[str]) -> "DropRareWords":
        """Count the words of the attacker's clean questions."""
        if not clean_questions:
            raise ValueError("drop_rare_words needs at least one clean question to fit its vocabulary")
        self.vocabulary = Counter(word_key(w) for q in clean_questions for w in q.split())
        return self

    def fit_from(self, ctx) -> Dict[str, Any]:
        """Fit on the attacker's clean questions; reports the vocabulary size."""
        self.fit([s.question for s in ctx.clean_data()])
        return {"clean_vocabulary": len(self.vocabulary)}

    def known(self, word: str) -> bool:
        """Whether ``word`` is frequent enough in the clean questions to stay (punctuation always stays)."""
        key = word_key(word)
        return not key or self.vocabulary[key] >= self.config.min_count

    def transform_question(self, question: str) -> str:
        if self.vocabulary is None:
            raise RuntimeError("drop_rare_words is not fitted: call fit(clean_questions) first")
        words = question.split()
        rare = [i for i, w in enumerate(words) if not self.known(w)][:self.config.max_removed]
        if len(rare) == len(words):
            return question
        drop = set(rare)
        return " ".join(w for i, w in enumerate(words) if i not in drop)
