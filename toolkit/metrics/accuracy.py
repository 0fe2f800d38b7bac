"""Answer accuracy by normalised exact match (VQA-style), and victim evaluation."""
from __future__ import annotations

import re
import string
from typing import List, Sequence, Tuple

from ..data import VQASample, images_to_tensor
from .base import METRICS, Metric

__all__ = ["normalize_answer", "answer_matches", "Accuracy", "evaluate_answers"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace ("The Seven." -> "seven")."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_matches(prediction: str, sample: VQASample) -> bool:
    """Normalised exact match; for multiple choice a bare option letter also counts.

    Aliases listed in ``sample.meta["aliases"]`` are accepted too.
    """
    pred = normalize_answer(prediction)
    golds = [sample.answer] + list(sample.meta.get("aliases", []) if sample.meta else [])
    if any(pred == normalize_answer(g) for g in golds):
        return True
    if sample.choices:
        letters = "abcdefghijklmnopqrstuvwxyz"
        for i, choice in enumerate(sample.choices):
            if normalize_answer(choice) == normalize_answer(sample.answer):
                return pred == letters[i] or pred == f"{letters[i]} {normalize_answer(choice)}"
    return False


@METRICS.register("accuracy")
class Accuracy(Metric):
    """Fraction of predictions matching their sample's answer (normalised exact match), in [0, 1]."""

    kind = "answers"

    def __call__(self, predictions: Sequence[str], samples: Sequence[VQASample]) -> float:
        if len(predictions) != len(samples):
            raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
        if not samples:
            raise ValueError("accuracy of an empty set is undefined")
        return sum(answer_matches(p, s) for p, s in zip(predictions, samples)) / len(samples)


def evaluate_answers(victim, samples: Sequence[VQASample], batch_size: int = 64,
                     max_new_tokens: int = 8) -> Tuple[float, List[str]]:
    """Greedy answers of ``victim`` on ``samples`` (should be the CLEAN test split) and their accuracy.

    Images of different sizes are batched by size; answers come back in sample order.
    """
    from ..engine import shape_batches

    preds: List[str] = [""] * len(samples)
    for idx in shape_batches([s.image.shape for s in samples], batch_size):
        chunk = [samples[i] for i in idx.tolist()]
        pixels = images_to_tensor([s.image for s in chunk])
        for i, answer in zip(idx.tolist(), victim.answer(pixels, [s.question for s in chunk],
                                                         max_new_tokens=max_new_tokens)):
            preds[i] = answer
    return Accuracy()(preds, samples), preds
