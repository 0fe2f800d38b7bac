"""Fluency-aware trigger search for the trigger defenses (MEM, MMGuard): options, rules and start triggers.

The plain search (:func:`~.hotflip.trigger_pass`) picks trigger words by the surrogate loss alone, so released
questions read like "animal question question question What drink is in the cup?" and an attacker's
ONION-style filter (Qi et al., EMNLP 2021; :class:`toolkit.attacks.trigger_filter.TriggerFilter`) strips most
trigger words. The options of :class:`FluencyConfig` (all off by default: the plain search, bit for bit):

- ``lambda_flu`` (lambda >= 0): the verified objective of a candidate becomes, per sample,
  loss + lambda * (nll(candidate question) - nll(clean question)) under the defender's LM
  (``fluency_scorer``: ``"ngram"``, an :class:`~toolkit.surrogates.ngram.NgramLM` fitted on the protected
  dataset's own clean questions, or ``"surrogate"``, the first surrogate's ``text_nll`` as adapted at the
  time of the pass). NLL = mean per-token negative log-likelihood (nats). The gradient screen is unchanged.
- ``filter_aware``: a candidate is accepted only if no trigger word of its question is flagged by the
  attacker's test run with the defender's LM (:func:`toolkit.triggers.word_suspicion` above a threshold
  fitted as the ``filter_quantile`` of the suspicion of every word of the clean questions,
  :func:`toolkit.triggers.suspicion_threshold`; the attacker's default quantile is 0.99, so the default 0.95
  leaves a margin for an attacker's LM fitted on other questions).
- ``trigger_position="natural"``: every sample has its own insertion point (a word index), chosen for the
  start trigger by the defender-LM NLL and moved by the search (slot 0 also verifies the current trigger at
  every other word boundary).
- ``trigger_vocabulary``: ``"admissible"`` (the surrogate's admissible tokens), ``"questions"`` (only the
  words of the clean questions that are admissible tokens of the surrogate) or ``"both"`` (the screen keeps
  the top-K of each, so the few question words are not crowded out).
- ``no_repeated_words``: no word twice in a trigger, nor a word of the sample's question (case-insensitive).
- ``leakage_guard``: the banned-word check (answer words, and now every surrogate's chat-template words)
  also rejects fragments and other forms of them (:func:`toolkit.triggers.leaks`: "cam" for "camera",
  "ASSISTAN" for "ASSISTANT").

Start triggers under these rules (:meth:`TriggerRules.start`) are built word by word: each slot draws
``START_DRAWS`` words of each vocabulary part, ranks the candidate questions by defender-LM NLL (random order
without a scorer) and keeps the first that stays one token per word in place, repeats nothing and passes the
filter; a slot is redrawn up to ``attempts`` times (a word that cannot be placed raises, as before). With
``filter_aware`` a trigger that cannot grow after a few draws stops short (the budget eps_t is "at most"), and a
sample where no word passes keeps no trigger (its image perturbation still protects it; a trigger the
attacker's filter would strip only tells it where to look); only when no sample gets a word does it raise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ...registry import check_choice, check_range
from ...surrogates.ensemble import weighted_members
from ...surrogates.ngram import NgramLM
from ...triggers import (check_trigger_position, insert_trigger, suspicion_threshold,
                         trigger_word_indices, word_suspicion, words_of)
from .config import MinMinConfig

__all__ = ["FluencyConfig", "TriggerRules", "FluentTriggers", "check_search_position", "FLUENCY_SCORERS",
           "TRIGGER_VOCABULARIES", "START_DRAWS"]

FLUENCY_SCORERS = ("ngram", "surrogate")
TRIGGER_VOCABULARIES = ("admissible", "questions", "both")
#: words drawn per vocabulary part and start-trigger slot
START_DRAWS = 8
#: candidate questions (best NLL first) tested per start draw
_START_TESTS = 8
#: draws of the first / a further start word under filter_aware before the trigger stops short
_FILTER_ATTEMPTS = (4, 2)


def check_search_position(position: Any) -> None:
    """A config's ``trigger_position``: "natural" (per-sample, searched) or an insertion position
    (:func:`toolkit.triggers.check_trigger_position`)."""
    if position != "natural":
        check_trigger_position(position)


@dataclass(frozen=True, kw_only=True)
class FluencyConfig(MinMinConfig):
    """The fluency options shared by MEM and MMGuard (see the module docstring; defaults = the plain search).

    Attributes:
        lambda_flu: weight of the defender-LM NLL increase (nats per token) in the verified objective (0).
        fluency_scorer: "ngram" (fitted on the clean questions) or "surrogate" (the first surrogate's LM).
        filter_aware: accept only candidates whose trigger words pass the defender's own ONION test (False).
        filter_quantile: quantile of the clean words' suspicion used as that test's threshold (0.95).
        trigger_vocabulary: "admissible", "questions" or "both".
        no_repeated_words: no word twice in a trigger nor one already in its question (False).
        leakage_guard: also reject fragments / stems of answer and chat-template words (False).
    """

    lambda_flu: float = 0.0
    fluency_scorer: str = "ngram"
    filter_aware: bool = False
    filter_quantile: float = 0.95
    trigger_vocabulary: str = "admissible"
    no_repeated_words: bool = False
    leakage_guard: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("lambda_flu", self.lambda_flu, 0, 1e6)
        check_choice("fluency_scorer", self.fluency_scorer, set(FLUENCY_SCORERS))
        check_range("filter_quantile", self.filter_quantile, 0, 1)
        check_choice("trigger_vocabulary", self.trigger_vocabulary, set(TRIGGER_VOCABULARIES))
        for name in ("filter_aware", "no_repeated_words", "leakage_guard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def fluent_search(self) -> bool:
        """Whether any fluency option is on (off: the plain search and start triggers, bit for bit)."""
        return bool(self.lambda_flu or self.filter_aware or self.no_repeated_words or self.leakage_guard
                    or self.trigger_vocabulary != "admissible" or getattr(self, "trigger_position", None) == "natural")


class TriggerRules:
    """What the fluency-aware search of one run checks and scores (built from a :class:`FluencyConfig`;
    lives on :attr:`Perturbation.rules` so :func:`~.hotflip.trigger_pass` finds it).

    Attributes:
        lambda_flu, filter_aware, natural, vocabulary, no_repeats, leakage_guard: the config's options.
        scorer: the defender's LM (``text_nll(texts) -> (N,)``) or None when no option needs one.
        banned: the words no trigger may contain or (with the guard) leak.
        question_words: every word of the clean questions (as written and lower-cased).
        clean_nll: (N,) defender-LM NLL of each clean question; threshold: the filter's (None: no filter).
    """

    def __init__(self, config: FluencyConfig, pert, surrogates: Sequence) -> None:
        self.lambda_flu = float(config.lambda_flu)
        self.filter_aware = config.filter_aware
        self.quantile = config.filter_quantile
        self.natural = getattr(config, "trigger_position", None) == "natural"
        self.vocabulary = config.trigger_vocabulary
        self.no_repeats = config.no_repeated_words
        self.leakage_guard = config.leakage_guard
        self.clean_questions = [s.question for s in pert.samples]
        self.question_words = set().union(*(words_of(q) for q in self.clean_questions))
        self.question_words |= {w.lower() for w in self.question_words}
        self._own_words = [{w.lower() for w in words_of(q)} for q in self.clean_questions]
        self.banned = set(pert.banned_words)
        members = [s for s, _ in weighted_members(surrogates)]
        if self.leakage_guard:  # the chat template's words (role markers) of every surrogate
            for s in members:
                if hasattr(s, "prompt_text") and hasattr(s, "answer_text"):
                    self.banned |= words_of(s.prompt_text("") + s.answer_text(""))
        self.scorer = None
        self.dynamic = False
        if self.lambda_flu or self.filter_aware or self.natural:
            if config.fluency_scorer == "ngram":
                self.scorer = NgramLM().fit(self.clean_questions)
            else:
                if not hasattr(members[0], "text_nll"):
                    raise ValueError("fluency_scorer='surrogate' needs a first surrogate with text_nll")
                self.scorer, self.dynamic = members[0], True  # changes as the surrogate adapts
        self.clean_nll: Optional[torch.Tensor] = None
        self.threshold: Optional[float] = None
        self.refresh()

    def refresh(self) -> None:
        """(Re)compute the clean questions' NLL and the filter threshold (once for the n-gram LM; at every
        pass for the surrogate's LM, which the run adapts)."""
        if self.scorer is None or (self.clean_nll is not None and not self.dynamic):
            return
        self.clean_nll = self.scorer.text_nll(self.clean_questions).double().cpu()
        if self.filter_aware:
            self.threshold = suspicion_threshold(self.scorer, self.clean_questions, self.quantile,
                                                 who="filter_aware")

    # ------------------------------------------------------------------ checks
    def vocabularies(self, surrogate) -> List[Any]:
        """The screen's vocabulary parts for ``surrogate`` (each part gets its own top-K), banned words and
        (with the guard) their leaks removed."""
        base = surrogate.trigger_vocabulary().without(self.banned, guard=self.leakage_guard)
        if self.vocabulary == "admissible":
            return [base]
        own = base.only(self.question_words)
        parts = [own] if self.vocabulary == "questions" else [base, own]
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("trigger_vocabulary='questions': no word of the clean questions is an admissible, "
                             "unbanned token of the surrogate")
        return parts

    def allowed(self, i: int, words: Sequence[str]) -> bool:
        """``no_repeated_words``: no word twice in ``words`` and none of item ``i``'s question words."""
        if not self.no_repeats:
            return True
        low = [w.lower() for w in words]
        return len(set(low)) == len(low) and not set(low) & self._own_words[i]

    def nll(self, texts: Sequence[str]) -> torch.Tensor:
        """Defender-LM NLL (N,) float64 (nats per token)."""
        return self.scorer.text_nll(list(texts)).double().cpu()

    def penalty(self, items: Sequence[int], texts: Sequence[str]) -> List[float]:
        """lambda_flu * (nll(text) - nll(clean question)) per (item, text); zeros when lambda_flu = 0."""
        if not self.lambda_flu or not texts:
            return [0.0] * len(texts)
        gain = self.nll(texts) - self.clean_nll[torch.tensor(list(items))]
        return (self.lambda_flu * gain).tolist()

    def passes(self, text: str, span: Optional[Tuple[int, int]]) -> bool:
        """Whether no trigger word (inside ``span``) of ``text`` is flagged by the defender's ONION test
        (always True without ``filter_aware``)."""
        if not self.filter_aware:
            return True
        scores = word_suspicion(self.scorer, text)
        return all(scores[j] <= self.threshold for j in trigger_word_indices(text, span))

    def boundaries(self, question: str, words: Sequence[str]) -> List[int]:
        """The canonical word boundaries of ``question`` for ``words``: one word index per distinct result
        (the smallest), so a position read back from the text (:func:`trigger_position_of`) is the same."""
        n = len(question.split())
        if not set(words) & set(question.split()):  # two insertions read the same only across equal words
            return list(range(n + 1))
        seen, out = set(), []
        for k in range(n + 1):
            text = insert_trigger(question, words, k)[0]
            if text not in seen:
                seen.add(text)
                out.append(k)
        return out

    # ------------------------------------------------------------------ start
    def start(self, pert, surrogate, length: int, position: Any, gen: torch.Generator,
              check: Optional[Sequence] = None, attempts: int = 50, who: str = "trigger defense") -> None:
        """Start triggers of at most ``length`` words under these rules (see the module docstring); sets
        ``pert.triggers``, ``pert.position`` and, for natural insertion, ``pert.positions``."""
        parts = self.vocabularies(surrogate)
        n = len(pert)
        pert.triggers = [[] for _ in range(n)]
        pert.position = "natural" if self.natural else position
        pert.positions = [0] * n if self.natural else None
        for i in range(n):
            words, where = [], (None if self.natural else position)
            for slot in range(length):
                chosen = None
                for _ in range(_FILTER_ATTEMPTS[bool(words)] if self.filter_aware else attempts):
                    chosen = self._start_word(pert, i, words, where, parts, gen, check)
                    if chosen is not None:
                        break
                if chosen is None:
                    if self.filter_aware:
                        break
                    raise ValueError(
                        f"{who}: no start trigger word for sample {i} ({pert.samples[i].question!r}) stays one token "
                        f"in place{' and repeats nothing' if self.no_repeats else ''} after {attempts} draws of "
                        f"{START_DRAWS} words per vocabulary part; try trigger_vocabulary='both' or "
                        f"no_repeated_words=false")
                words, where = chosen
            pert.triggers[i] = words
            if self.natural:
                pert.positions[i] = where if words else 0
        if self.filter_aware and not any(pert.triggers):
            raise ValueError(
                f"{who}: no sample has a start trigger word that passes the defender's filter (threshold "
                f"{self.threshold:.4g}, filter_quantile={self.quantile}); the clean questions are too few or too "
                f"uniform for this test. Try a higher filter_quantile, trigger_vocabulary='both', "
                f"no_repeated_words=false or filter_aware=false")

    def _start_word(self, pert, i: int, words: List[str], where: Any, parts, gen: torch.Generator,
                    check: Optional[Sequence]) -> Optional[Tuple[List[str], Any]]:
        """One draw for the next start word of item ``i``: the best acceptable (words, position), or None."""
        question = pert.samples[i].question
        drawn: List[str] = []
        for part in parts:
            picks = torch.randint(0, len(part), (START_DRAWS,), generator=gen).tolist()
            drawn += [part.words[k] for k in picks if part.words[k] not in drawn]
        options = []
        for w in drawn:
            new = words + [w]
            if not self.allowed(i, new):
                continue
            spots = self.boundaries(question, new) if self.natural and not words else [where]
            options += [(new, p) for p in spots]
        if not options:
            return None
        if self.scorer is not None:
            nll = self.nll([insert_trigger(question, new, p)[0] for new, p in options])
            options = [options[k] for k in torch.argsort(nll, stable=True).tolist()]
        tested = 0
        for new, p in options:
            if check and not pert.single_token_words(check, [i], [new], positions=[p])[0]:
                continue
            text, span, _ = insert_trigger(question, new, p)
            if self.passes(text, span):
                return new, p
            tested += 1
            if tested >= _START_TESTS:
                break
        return None


class FluentTriggers:
    """Mixin of the trigger defenses (MEM, MMGuard; their config is a :class:`FluencyConfig` with
    ``max_trigger_tokens``, ``trigger_position`` and ``single_token_words``): start triggers under the
    fluency rules (each released trigger records its own position: ``Perturbation.position_of``)."""

    def start_triggers(self, run) -> None:
        """Start triggers: random admissible words as before when no fluency option is on, else
        :meth:`TriggerRules.start` (the rules stay on ``run.pert`` for the trigger passes)."""
        cfg = self.config
        check = run.surrogates if cfg.single_token_words else None
        if not cfg.fluent_search:
            run.pert.random_triggers(run.weighted[0][0], cfg.max_trigger_tokens, cfg.trigger_position, run.gen,
                                     check=check)
            return
        run.pert.rules = TriggerRules(cfg, run.pert, run.surrogates)
        run.pert.rules.start(run.pert, run.weighted[0][0], cfg.max_trigger_tokens, cfg.trigger_position, run.gen,
                             check=check, who=self.name)
