"""A word n-gram language model fitted on clean questions: a text scorer without pretrained weights.

The attacker's scorer for :class:`~toolkit.attacks.trigger_filter.TriggerFilter`
when no pretrained language model is at hand (random-init tiny victims have no
useful perplexity), and the owner's for the cross-fitted question perplexity
(:mod:`toolkit.metrics.perplexity`); it lives here, below both, as a
:class:`~toolkit.surrogates.capabilities.TextScorer`.

Words are lower-cased ``\\w+`` runs and single punctuation marks; probabilities
are add-``k`` smoothed over the fitted vocabulary plus one unknown-word slot,
with sentence start/end markers. ``text_nll`` has the same
meaning as the LVLM surrogates' method: mean negative log-probability per
predicted token (nats), so ``exp`` of it is the perplexity.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["NgramLM", "words_for_lm"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BOS, _EOS, _UNK = "<s>", "</s>", "<unk>"


def words_for_lm(text: str) -> List[str]:
    """Lower-cased word and punctuation tokens of ``text``."""
    return _TOKEN.findall(text.lower())


class NgramLM:
    """Add-``k`` smoothed word ``order``-gram model; ``fit(texts)`` then ``text_nll(texts)``.

    ``order`` >= 1 (1 = unigram), ``k`` > 0 the smoothing mass added to every count.
    """

    def __init__(self, order: int = 2, k: float = 0.1) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        self.order, self.k = order, float(k)
        self.vocab: set = set()
        self.counts: Dict[Tuple[str, ...], Counter] = {}
        self.totals: Dict[Tuple[str, ...], int] = {}  # sum of each context's counts (computed once at fit)

    def _padded(self, text: str) -> List[str]:
        words = [w if w in self.vocab else _UNK for w in words_for_lm(text)]
        return [_BOS] * (self.order - 1) + words + [_EOS]

    def fit(self, texts: Sequence[str]) -> "NgramLM":
        """Count the n-grams of ``texts`` (the attacker's clean questions)."""
        texts = list(texts)
        if not texts:
            raise ValueError("NgramLM.fit: need at least one text")
        self.vocab = {w for t in texts for w in words_for_lm(t)}
        self.counts = {}
        for t in texts:
            seq = self._padded(t)
            for i in range(self.order - 1, len(seq)):
                self.counts.setdefault(tuple(seq[i - self.order + 1:i]), Counter())[seq[i]] += 1
        self.totals = {ctx: sum(c.values()) for ctx, c in self.counts.items()}
        return self

    def text_nll(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean next-word negative log-probability of each text (nats), shape (N,)."""
        if not self.counts:
            raise RuntimeError("NgramLM: call fit(texts) first")
        size = len(self.vocab) + 2  # words + </s> + <unk>
        out, empty = [], Counter()
        for t in texts:
            seq = self._padded(t)
            total = 0.0
            for i in range(self.order - 1, len(seq)):
                key = tuple(seq[i - self.order + 1:i])
                p = (self.counts.get(key, empty)[seq[i]] + self.k) / (self.totals.get(key, 0) + self.k * size)
                total -= math.log(p)
            out.append(total / (len(seq) - self.order + 1))
        return torch.tensor(out, dtype=torch.float64)
