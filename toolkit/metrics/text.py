"""Text stealth metrics between clean and released questions, and the share of triggers a filter removed.

MMGuard-style protections insert trigger words into the questions; these
metrics say how visible that is. Each takes two aligned sequences of samples
(same ids): trigger length and word edit distance are means over samples, in
words; ``question_char_edit_distance`` is the mean character Levenshtein
distance (rapidfuzz) and ``question_bleu`` the BLEU (sacrebleu, 0-100) of the
released questions against the clean ones, the text stealth numbers the MMGuard
paper (Zhao et al. 2026) reports. Perplexity is in :mod:`.perplexity`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, Sequence

from ..data import VQASample
from ..registry import Config, check_choice
from .base import METRICS, Metric, aligned_samples

__all__ = ["TriggerLength", "TriggerEditDistance", "QuestionCharEditDistance", "QuestionBLEU", "word_edit_distance",
           "question_bleu", "OFFLINE_TOKENIZERS", "trigger_removal"]


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Word-level Levenshtein distance between two token lists."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@METRICS.register("trigger_length")
class TriggerLength(Metric):
    """Mean number of inserted trigger words per released question (0 for samples without a trigger)."""

    kind = "text"
    higher_is_better = False

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        lengths = [len((b.meta.get("trigger") or {}).get("words", ())) for _, b in aligned_samples(clean, released)]
        return sum(lengths) / len(lengths)


@METRICS.register("trigger_edit_distance")
class TriggerEditDistance(Metric):
    """Mean word-level edit distance between each clean question and its released version."""

    kind = "text"
    higher_is_better = False

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        edits = [word_edit_distance(a.question.split(), b.question.split()) for a, b in aligned_samples(clean, released)]
        return sum(edits) / len(edits)


@METRICS.register("question_char_edit_distance")
class QuestionCharEditDistance(Metric):
    """Mean character-level Levenshtein distance (insertions, deletions, substitutions; characters) from each
    clean question to its released version (``rapidfuzz.distance.Levenshtein``)."""

    kind = "text"
    higher_is_better = False

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        from rapidfuzz.distance import Levenshtein

        edits = [Levenshtein.distance(a.question, b.question) for a, b in aligned_samples(clean, released)]
        return sum(edits) / len(edits)


#: sacrebleu tokenizers that need no download (``spm`` / ``flores*`` fetch a SentencePiece model at first use)
OFFLINE_TOKENIZERS = frozenset({"13a", "intl", "char", "none", "zh"})


def question_bleu(released: Sequence[str], clean: Sequence[str], *, tokenize: str = "13a", lowercase: bool = False,
                  level: str = "corpus") -> float:
    """BLEU (Papineni et al. 2002; 0-100) of the ``released`` questions, each against its one ``clean``
    question as reference, computed by sacrebleu.

    ``level="corpus"``: one corpus BLEU (n-gram counts summed over all questions, up to 4-grams, one
    brevity penalty). ``level="sentence"``: the mean of per-question sentence BLEU. Both use sacrebleu's
    default ``exp`` smoothing (an n-gram order that matches nothing counts as a halved pseudo-count instead
    of zeroing the score) and ``effective_order`` (orders no question is long enough for are left out, so
    a set of identical 2-word questions scores 100, not 0). ``tokenize``: a sacrebleu tokenizer (default
    ``13a``, which splits punctuation off words, as WMT does; one of :data:`OFFLINE_TOKENIZERS`).
    Identical text gives 100.
    """
    from sacrebleu.metrics import BLEU

    released, clean = list(released), list(clean)
    if len(released) != len(clean) or not clean:
        raise ValueError(f"question_bleu: need two aligned non-empty lists, got {len(released)} and {len(clean)}")
    check_choice("level", level, {"corpus", "sentence"})
    check_choice("tokenize", tokenize, OFFLINE_TOKENIZERS)
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    if level == "corpus":
        return float(bleu.corpus_score(released, [clean]).score)
    return sum(bleu.sentence_score(h, [r]).score for h, r in zip(released, clean)) / len(clean)


@METRICS.register("question_bleu")
class QuestionBLEU(Metric):
    """BLEU (0-100) of the released questions against the clean ones as references; see :func:`question_bleu`."""

    kind = "text"

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """``tokenize``: sacrebleu tokenizer; ``lowercase``: compare case-insensitively; ``level``: ``corpus``
        (one corpus BLEU) or ``sentence`` (mean sentence BLEU)."""

        tokenize: str = "13a"
        lowercase: bool = False
        level: str = "corpus"

        def __post_init__(self) -> None:
            check_choice("level", self.level, {"corpus", "sentence"})
            check_choice("tokenize", self.tokenize, OFFLINE_TOKENIZERS)

    def __call__(self, clean: Sequence[VQASample], released: Sequence[VQASample]) -> float:
        pairs = list(aligned_samples(clean, released))
        return question_bleu([b.question for _, b in pairs], [a.question for a, _ in pairs],
                             tokenize=self.config.tokenize, lowercase=self.config.lowercase, level=self.config.level)


def trigger_removal(released: Sequence[VQASample], transformed: Sequence[VQASample]) -> Dict[str, float]:
    """Share of the inserted trigger words a text countermeasure removed: ``{"trigger_removed": share}``,
    or ``{}`` when nothing was inserted.

    Samples are matched by id; a trigger word counts as removed when the
    transformed question holds fewer copies of it than the released one.
    """
    after = {s.id: Counter(s.question.split()) for s in transformed}
    total = removed = 0
    for s in released:
        trig = s.meta.get("trigger")
        if not trig or s.id not in after:
            continue
        before = Counter(s.question.split())
        for w, n in Counter(trig["words"]).items():
            total += n
            removed += min(n, max(0, before[w] - after[s.id][w]))
    return {"trigger_removed": removed / total} if total else {}
