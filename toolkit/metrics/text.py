"""Text stealth metrics between clean and released questions, and the share of triggers a filter removed.

MMGuard-style protections insert trigger words into the questions; these
metrics say how visible that is. Both take two aligned sequences of samples
(same ids) and return the mean over samples, in words.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Sequence

from ..data import VQASample
from .base import METRICS, Metric, aligned_samples

__all__ = ["TriggerLength", "TriggerEditDistance", "word_edit_distance", "trigger_removal"]


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
