"""Probe (issue 15): can a text "trigger" made only of the task's own stock phrases survive the adaptive attacker?

A matrix plugin (``benchmarks/specs/phrase_code.yaml`` loads it), not part of the toolkit: it tests an idea and
records the numbers in docs/results/fluent.md.

The idea. Every word filter in the toolkit (the ONION-style n-gram and victim-LM trigger filters, drop_rare_words)
strips words that look foreign to the attacker's clean questions. Many VQA corpora wrap the question in stock
sentences ("Please tell me:", "Be brief.", LLaVA's "Answer the question using a single word or phrase."). The
defense here (``phrase_code_probe``) learns those stock sentences from the owner's own questions and re-wraps each
released question in a prefix / suffix pair chosen by its *answer* (a class-wise code: one pair per answer,
answers sharing pairs when there are more answers than pairs). The released questions stay as fluent as the
clean ones, and a victim fine-tuned on them can learn "this wrapper -> this answer" as a shortcut that misleads it
on clean questions, whose wrappers are random. ``mode: insert`` only adds the coded sentences (the original
wrappers stay), ``mode: rewrite`` replaces them.

The adaptive attacker who knows this defense strips stock sentences (``strip_stock_phrases``, fitted on its own
clean questions); that countermeasure is here too, so the probe reports the column that defeats it.

Threat model: the owner changes questions only (no image perturbation); the attacker holds clean questions of
the same task (``attacker_clean``).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Set, Tuple

from toolkit.attacks.base import COUNTERMEASURES, Transform
from toolkit.defenses.base import DEFENSES, Defense, DefenseConfig, Proposal
from toolkit.metrics.accuracy import normalize_answer
from toolkit.registry import Config, check_choice, check_range

_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+")


def sentences(question: str) -> List[str]:
    """The question split after '.', '?', '!' and ':' ("Please tell me: what is it? Be brief." -> 3 parts)."""
    return [s for s in _SENTENCE_END.split(question.strip()) if s]


def stock_phrases(questions: Sequence[str], min_share: float) -> Tuple[Set[str], List[str], List[str]]:
    """Wrapper sentences of ``questions``: sentences that occur verbatim in at least ``min_share`` of them, start
    with a capital (a lower-case part continues a sentence, e.g. "... the circle: left or right?") and stand only
    in front or at the end, never between two other sentences (a common short question such as "What does the
    sign say?" is frequent too, but sits between its wrappers).

    Returns (all stock sentences, those usually in front, those usually at the end), each sorted.
    """
    if not questions:
        raise ValueError("stock_phrases needs at least one question")
    front, back, middle = Counter(), Counter(), Counter()
    for q in questions:
        parts = sentences(q)
        if len(parts) < 2:
            continue
        for i, s in enumerate(dict.fromkeys(parts)):
            (front if i == 0 else back if i == len(parts) - 1 else middle)[s] += 1
    seen = front + back + middle
    stock = {s for s, c in seen.items()
             if c >= min_share * len(questions) and s[:1].isupper() and middle[s] <= 0.05 * c}
    prefixes = sorted(s for s in stock if front[s] >= back[s])
    suffixes = sorted(s for s in stock if front[s] < back[s])
    return stock, prefixes, suffixes


def core(question: str, stock: Set[str]) -> str:
    """The question without its stock sentences (the question itself when nothing else is left)."""
    kept = [s for s in sentences(question) if s not in stock]
    return " ".join(kept) if kept else question.strip()


def wrap(prefix: str, body: str, suffix: str) -> str:
    """prefix + body + suffix; the body's first letter lower-cased after a colon, capitalised otherwise."""
    body = (body[:1].lower() if prefix.endswith(":") else body[:1].upper()) + body[1:]
    return " ".join(x for x in (prefix, body, suffix) if x)


@DEFENSES.register("phrase_code_probe")
class PhraseCode(Defense):
    """Class-wise code of stock prefix / suffix sentences (see the module docstring); images are unchanged."""

    @dataclass(frozen=True, kw_only=True)
    class Config(DefenseConfig):
        """min_share: how common a sentence must be to count as stock; mode: rewrite | insert;
        max_trigger_tokens: unused (the base class asks every question-changing defense for it)."""

        min_share: float = 0.02
        mode: str = "rewrite"
        max_trigger_tokens: int = 0

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("min_share", self.min_share, 0.0, 1.0, low_open=True)
            check_choice("mode", self.mode, {"rewrite", "insert"})

    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        stock, prefixes, suffixes = stock_phrases([s.question for s in dataset], self.config.min_share)
        if not stock:
            raise ValueError("phrase_code_probe: the questions have no stock sentences to code answers with")
        codes = [(p, s) for p in [""] + prefixes for s in [""] + suffixes]
        random.Random(self.config.seed).shuffle(codes)
        answers = Counter(normalize_answer(s.answer) for s in dataset)
        book = {a: codes[i % len(codes)] for i, (a, _) in enumerate(answers.most_common())}
        questions = []
        for s in dataset:
            prefix, suffix = book[normalize_answer(s.answer)]
            if self.config.mode == "rewrite":
                questions.append(wrap(prefix, core(s.question, stock), suffix))
            else:
                parts = sentences(s.question)
                text = s.question
                if prefix and prefix not in parts:  # a stock sentence in front keeps its capital
                    text = prefix + " " + text if parts[0] in stock else wrap(prefix, text, "")
                questions.append(text + " " + suffix if suffix and suffix not in parts else text)
        self._stock = stock
        return Proposal([s.image for s in dataset], questions=questions,
                        triggers=[{"words": [], "position": "start"} for _ in questions],
                        info={"stock": sorted(stock), "codes": len(codes), "answers": len(answers)})

    def _apply_triggers(self, dataset, protected, questions, triggers):
        """This probe's budget instead of the base class's inserted-words check: only stock sentences change."""
        for src, text in zip(dataset, questions):
            if core(text, self._stock).lower() != core(src.question, self._stock).lower():
                raise RuntimeError(f"phrase_code_probe changed more than stock sentences: {src.question!r} -> {text!r}")
        return [p.with_(question=q) for p, q in zip(protected, questions)]


@COUNTERMEASURES.register("strip_stock_phrases")
class StripStockPhrases(Transform):
    """The attacker removes every stock sentence (fitted on its own clean questions) from the released questions."""

    needs_fit = True

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """min_share: how common a sentence must be in the attacker's clean questions to be stripped."""

        min_share: float = 0.02

    def fit_from(self, ctx) -> Dict[str, Any]:
        """Learn the stock sentences of the attacker's clean questions."""
        self.stock = stock_phrases([s.question for s in ctx.clean_data()], self.config.min_share)[0]
        return {"stock_sentences": len(self.stock)}

    def transform_question(self, question: str) -> str:
        return wrap("", core(question, self.stock), "")
