"""ONION-style trigger filtering (Qi et al., EMNLP 2021) on the questions of the training split.

For each word w of a question, the suspicion score is how much removing w lowers
the language model's log-perplexity of the question: f(w) = nll(q) - nll(q without w).
Inserted trigger words are unnatural, so removing them lowers perplexity a lot.
The threshold is fitted on clean questions the attacker owns: the
``quantile`` of f over all clean words (at least 0), so at most that share of
clean words would be dropped. The suspicion and the threshold are
:func:`toolkit.triggers.word_suspicion` and :func:`toolkit.triggers.suspicion_threshold`, the same test a
filter-aware defense runs on its own questions. Any scorer with ``text_nll(texts) -> (N,)`` works; the victim's own
language model can serve (:meth:`HFVisionLanguageSurrogate.text_nll`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..data import VQADataset
from ..registry import Config, check_range
from ..triggers import suspicion_threshold, word_suspicion
from .base import COUNTERMEASURES, Transform
from ..surrogates.ngram import NgramLM

__all__ = ["TriggerFilter"]


@COUNTERMEASURES.register("trigger_filter")
class TriggerFilter(Transform):
    """Drop question words whose removal lowers the LM's log-perplexity by more than a fitted threshold.

    Use: ``TriggerFilter(quantile=0.99).fit(scorer, clean_questions)(dataset)``.
    ``threshold`` (if > 0) fixes the threshold instead of fitting it.
    """

    needs_fit = True
    fit_keys = frozenset({"scorer"})

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        quantile: float = 0.99
        threshold: float = 0.0
        max_removed: int = 8

        def __post_init__(self) -> None:
            check_range("quantile", self.quantile, 0.0, 1.0)
            check_range("threshold", self.threshold, 0.0, 1e6)
            check_range("max_removed", self.max_removed, 0, 1 << 20)

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.scorer = None
        self.fitted_threshold: Optional[float] = self.config.threshold or None

    def suspicion(self, question: str) -> List[float]:
        """f(w) for every whitespace-separated word of ``question`` (log-perplexity drop)."""
        return word_suspicion(self.scorer, question)

    @classmethod
    def check_fit(cls, fit, models, defenses) -> None:
        """``fit.scorer``: ``ngram`` (default; an :class:`NgramLM` on the attacker's clean questions) or a model name."""
        scorer = fit.get("scorer", "ngram")
        if scorer != "ngram" and scorer not in models:
            raise ValueError(f"scorer: 'ngram' or a model name, got {scorer!r}")

    def fit_identity(self, ctx) -> Dict[str, Any]:
        scorer = ctx.fit.get("scorer", "ngram")
        return {} if scorer == "ngram" else {"scorer": ctx.model_identity(scorer)}

    def fit_from(self, ctx) -> Dict[str, Any]:
        """Fit the scorer (``fit.scorer``: an n-gram LM on the attacker's clean questions, or that model's own
        language model) and the threshold on the attacker's clean questions."""
        questions = [s.question for s in ctx.clean_data()]
        name = ctx.fit.get("scorer", "ngram")
        self.fit(NgramLM().fit(questions) if name == "ngram" else ctx.load_model(name), questions)
        return {"trigger_filter_threshold": self.fitted_threshold}

    def fit(self, scorer, clean_questions: Sequence[str]) -> "TriggerFilter":
        """Set the LM scorer and fit the threshold on the attacker's clean questions."""
        self.scorer = scorer
        if not self.config.threshold:
            self.fitted_threshold = suspicion_threshold(scorer, clean_questions, self.config.quantile,
                                                        who="trigger_filter")
        return self

    def filter(self, question: str) -> str:
        """The question with its suspicious words removed (at most ``max_removed``)."""
        if self.scorer is None or self.fitted_threshold is None:
            raise RuntimeError("trigger_filter: call fit(scorer, clean_questions) first")
        words = question.split()
        scores = self.suspicion(question)
        ranked = sorted((i for i, f in enumerate(scores) if f > self.fitted_threshold), key=lambda i: -scores[i])
        drop = set(ranked[:self.config.max_removed])
        kept = [w for i, w in enumerate(words) if i not in drop]
        return " ".join(kept) if kept else question

    def transform_question(self, question: str) -> str:
        return self.filter(question)

    def __call__(self, dataset: VQADataset) -> VQADataset:
        if self.scorer is None:
            raise RuntimeError("trigger_filter: call fit(scorer, clean_questions) first")
        return super().__call__(dataset)
