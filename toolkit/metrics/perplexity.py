"""Question perplexity: how unnatural the released questions read next to the clean ones.

The MMGuard paper (Zhao et al. 2026) reports a GPT-2 perplexity of about 39 for
clean questions and 92 for protected ones. Two scorers here, each with a
released and a clean metric so the two compare:

- ``question_perplexity`` / ``question_perplexity_clean``: a word n-gram model
  (:class:`~toolkit.surrogates.ngram.NgramLM`) fitted on the clean questions of
  the same set, *cross-fitted*: the questions are dealt into ``folds`` folds
  (question i into fold ``i % folds``) and question i, clean and released, is
  scored by a model fitted on the clean questions of the other folds only, so no
  question scores itself. Needs no weights.
- ``question_perplexity_lm`` / ``question_perplexity_lm_clean``: a language model
  the user owns, any object with ``text_nll(texts) -> (N,)`` (every LVLM
  surrogate; in a matrix spec ``{name: ..., model: MODEL_KEY}``).

Units: perplexity = ``exp`` of the mean over questions of each question's mean
next-token negative log-likelihood in nats (the geometric mean of per-question
perplexities; every question weighs the same whatever its length, because
``text_nll`` returns per-question means). Lower reads more natural.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..data import VQASample
from ..registry import Config, check_range
from ..surrogates.ngram import NgramLM
from .base import METRICS, Metric, aligned_samples

__all__ = ["perplexity_of", "crossfit_ngram_perplexity", "lm_perplexity", "NgramPerplexity", "NgramPerplexityClean",
           "LMPerplexity", "LMPerplexityClean"]


def perplexity_of(nll: Any) -> float:
    """``exp`` of the mean of per-question mean token NLLs (nats), shape (N,) -> one perplexity."""
    values = np.asarray(nll, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("perplexity_of: no questions scored")
    return float(math.exp(values.mean()))


def crossfit_ngram_perplexity(clean: Sequence[str], released: Sequence[str], *, folds: int = 5, order: int = 2,
                              k: float = 0.1) -> Tuple[float, float]:
    """(clean perplexity, released perplexity) of aligned question lists under a cross-fitted word n-gram LM.

    Question i goes to fold ``i % folds`` (``folds`` is capped at the number of questions, so
    ``folds >= len(clean)`` is leave-one-out); both its clean and its released version are scored by an
    add-``k`` ``order``-gram model fitted on the clean questions of the other folds. Needs >= 2 questions.
    """
    clean, released = list(clean), list(released)
    if len(clean) != len(released):
        raise ValueError(f"need aligned question lists, got {len(clean)} and {len(released)}")
    if len(clean) < 2:
        raise ValueError(f"cross-fitting needs at least 2 questions, got {len(clean)}")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    folds = min(folds, len(clean))
    clean_nll, released_nll = np.empty(len(clean)), np.empty(len(clean))
    for f in range(folds):
        held = [i for i in range(len(clean)) if i % folds == f]
        lm = NgramLM(order, k).fit([q for i, q in enumerate(clean) if i % folds != f])
        clean_nll[held] = lm.text_nll([clean[i] for i in held]).numpy()
        released_nll[held] = lm.text_nll([released[i] for i in held]).numpy()
    return perplexity_of(clean_nll), perplexity_of(released_nll)


def lm_perplexity(scorer: Any, questions: Sequence[str]) -> float:
    """Perplexity of ``questions`` under ``scorer``'s own language model (``scorer.text_nll(texts)``: mean
    next-token NLL per text, nats, shape (N,), as every LVLM surrogate has)."""
    if scorer is None or not hasattr(scorer, "text_nll"):
        raise RuntimeError("LM perplexity needs a language model with text_nll(texts): pass scorer=MODEL in Python, "
                           "or give the metric as {name: ..., model: MODEL_KEY} in a matrix spec")
    nll = scorer.text_nll(list(questions))
    return perplexity_of(nll.detach().cpu().numpy() if hasattr(nll, "detach") else nll)


class _NgramBase(Metric):
    kind = "text"
    higher_is_better = False

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """``folds``: cross-fitting folds (>= 2); ``order``: n-gram order (>= 1); ``k``: add-k smoothing (> 0)."""

        folds: int = 5
        order: int = 2
        k: float = 0.1

        def __post_init__(self) -> None:
            if not isinstance(self.folds, int) or isinstance(self.folds, bool) or self.folds < 2:
                raise ValueError(f"folds must be an int >= 2, got {self.folds!r}")
            if not isinstance(self.order, int) or isinstance(self.order, bool) or self.order < 1:
                raise ValueError(f"order must be an int >= 1, got {self.order!r}")
            check_range("k", self.k, 0, math.inf, low_open=True, high_open=True)

    def both(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> Tuple[float, float]:
        """(clean, released) perplexity of the aligned sets; see :func:`crossfit_ngram_perplexity`."""
        pairs = list(aligned_samples(clean, released))
        c = self.config
        return crossfit_ngram_perplexity([a.question for a, _ in pairs], [b.question for _, b in pairs],
                                         folds=c.folds, order=c.order, k=c.k)


@METRICS.register("question_perplexity")
class NgramPerplexity(_NgramBase):
    """Perplexity of the released questions under a word n-gram LM cross-fitted on the clean questions."""

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        return self.both(clean, released)[1]


@METRICS.register("question_perplexity_clean")
class NgramPerplexityClean(_NgramBase):
    """The same cross-fitted n-gram perplexity of the clean questions (the baseline the released one is read
    against)."""

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        return self.both(clean, released)[0]


class _LMBase(Metric):
    kind = "text"
    higher_is_better = False
    needs_model = True

    def __init__(self, scorer: Optional[Any] = None, **config: Any) -> None:
        super().__init__(**config)
        #: the language model (anything with ``text_nll``); the matrix runner sets it from ``model:``
        self.scorer = scorer


@METRICS.register("question_perplexity_lm")
class LMPerplexity(_LMBase):
    """Perplexity of the released questions under the user's own language model (``scorer=``)."""

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        return lm_perplexity(self.scorer, [b.question for _, b in aligned_samples(clean, released)])


@METRICS.register("question_perplexity_lm_clean")
class LMPerplexityClean(_LMBase):
    """Perplexity of the clean questions under the user's own language model (``scorer=``)."""

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        return lm_perplexity(self.scorer, [a.question for a, _ in aligned_samples(clean, released)])
