"""Text triggers: admissible vocabulary, insertion into questions, HotFlip screen + exact verification.

Used by MEM (Liu et al., ACM MM 2024: a k-token trigger per pair) and MMGuard
(Zhao et al., 2026: at most eps_t inserted tokens per question). A trigger is a
list of words drawn from the admissible vocabulary of the first surrogate's
tokenizer (tokens that decode to a leading space + ASCII letters; no digits,
punctuation, special or control tokens). A word is one token only where the
tokenizer sees it with its leading space: at the start of a turn it may split
(" the" is one token, "the" after a newline two), so the min-min defenses check
each word in place against every surrogate (``single_token_words``, on by
default) and only then does the trigger length in tokens equal the number of
words. The trigger is *inserted* into the question at a word boundary; nothing
of the original text is replaced, and the answer is never touched.

Search (HotFlip, Ebrahimi et al. 2018): for slot j the first-order change of
the loss when the slot's token embedding e_j is swapped for e_v is
(e_v - e_j)^T g_j, with g_j the loss gradient at that token; the K most
promising words per surrogate are then verified exactly, each candidate
question re-tokenised as a real string, in batched forwards, and the best
(lowest loss for error-minimising triggers) is kept only if it beats the
current word.

Fluency (shared by the defenses' fluency-aware search and the attacker's ONION-style filter, Qi et al.
EMNLP 2021): :func:`word_suspicion` is the leave-one-word-out log-perplexity drop under any scorer with
``text_nll``, :func:`suspicion_threshold` the quantile of it over clean questions; :func:`leaks` is the
fragment / stem test of the leakage guard.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["admissible_vocabulary", "answer_words", "insert_trigger", "Vocabulary", "hotflip_scores", "TRIGGER_POSITIONS",
           "check_trigger_position", "words_of", "word_suspicion", "word_suspicions", "suspicion_threshold",
           "leaks", "word_stem", "trigger_position_of", "trigger_word_indices"]

_WORD = re.compile(r"^[A-Za-z]+$")
TRIGGER_POSITIONS = ("start", "end")


@dataclass(frozen=True)
class Vocabulary:
    """Admissible trigger tokens of one tokenizer.

    Attributes:
        ids: token ids (V_a,) long.
        words: the word of each id (no leading space).
    """

    ids: torch.Tensor
    words: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.words)

    def without(self, words, guard: bool = False) -> "Vocabulary":
        """A copy without the given words (compared case-insensitively); with ``guard`` also without every
        word that :func:`leaks` one of them (a fragment or another form of it)."""
        banned = {w.lower() for w in words}
        test = _leak_test(banned) if guard else banned.__contains__
        keep = [i for i, w in enumerate(self.words) if not test(w.lower())]
        if not keep:
            raise ValueError("every admissible trigger token was excluded")
        return Vocabulary(self.ids[torch.tensor(keep)], tuple(self.words[i] for i in keep))

    def only(self, words) -> "Vocabulary":
        """A copy with only the given words (exact spelling); may be empty."""
        allowed = set(words)
        keep = [i for i, w in enumerate(self.words) if w in allowed]
        return Vocabulary(self.ids[torch.tensor(keep, dtype=torch.long)], tuple(self.words[i] for i in keep))


def admissible_vocabulary(tokenizer, min_length: int = 2) -> Vocabulary:
    """Tokens that decode to a leading space + ASCII letters only (``" zebra"``), special tokens excluded.

    ``min_length`` drops one-letter words (too easy to spot and often merged by BPE).
    Surrogates further drop the words of their own chat template (role markers such as
    "ASSISTANT" act as control text) and defenses drop the dataset's answer words (a trigger
    must not carry the label).
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids, words = [], []
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if len(text) >= min_length + 1 and text[0] == " " and _WORD.match(text[1:]):
            ids.append(tid)
            words.append(text[1:])
    if not ids:
        raise ValueError("the tokenizer has no admissible trigger tokens (leading space + ASCII letters)")
    return Vocabulary(torch.tensor(ids), tuple(words))


def words_of(text: str) -> set:
    """The ASCII-letter words of ``text`` (for exclusion lists)."""
    return set(re.findall(r"[A-Za-z]+", text))


def answer_words(samples) -> set:
    """Every word of every sample's answer: the words no trigger may use (a trigger must not carry a label)."""
    return set().union(*(words_of(s.answer) for s in samples))


_SUFFIXES = ("ing", "ers", "ies", "est", "ed", "es", "er", "ly", "s")


def word_stem(word: str) -> str:
    """A crude stem: lower-cased, one common English suffix stripped if at least 3 letters remain
    ("circles" -> "circl", "colouring" -> "colour")."""
    w = word.lower()
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[:-len(suffix)]
    return w


def _leak_test(banned: set) -> Callable[[str], bool]:
    """The :func:`leaks` test against a fixed lower-cased ``banned`` set, with its prefixes and stems
    precomputed (a lookup per prefix of the word instead of a scan of ``banned``)."""
    prefixes = {b[:k] for b in banned for k in range(3, len(b) + 1)}
    stems = {word_stem(b) for b in banned}

    def test(word: str) -> bool:
        w = word.lower()
        return (w in banned or (len(w) >= 3 and w in prefixes) or word_stem(w) in stems
                or any(w[:k] in banned for k in range(3, len(w))))
    return test


def leaks(word: str, banned) -> bool:
    """Whether ``word`` leaks one of the ``banned`` words (case-insensitive): it is one, it is a 3+-letter
    prefix of one ("cam" of "camera", "ASSISTAN" of "ASSISTANT"), one of 3+ letters is its prefix
    ("circles" of "circle"), or both have the same :func:`word_stem`."""
    return _leak_test({b.lower() for b in banned})(word)


def check_trigger_position(position: Union[str, int]) -> None:
    """Valid positions: "start", "end" or a word index >= 0 (insert after that many words)."""
    if isinstance(position, bool) or not (position in TRIGGER_POSITIONS or (isinstance(position, int) and position >= 0)):
        raise ValueError(f"trigger position must be 'start', 'end' or a word index >= 0, got {position!r}")


def insert_trigger(question: str, words: Sequence[str], position: Union[str, int] = "start"
                   ) -> Tuple[str, Optional[Tuple[int, int]], List[Tuple[int, int]]]:
    """Insert ``words`` into ``question`` at a word boundary.

    Returns:
        (new question, character span of the whole trigger or None when empty,
        character span of each word).
    """
    check_trigger_position(position)
    if not words:
        return question, None, []
    for w in words:
        if not _WORD.match(w):
            raise ValueError(f"inadmissible trigger word {w!r} (ASCII letters only)")
    trigger = " ".join(words)
    if position == "start":
        cut = 0
    elif position == "end":
        cut = len(question)
    else:
        bounds = [m.start() for m in re.finditer(r"(?<=\S)\s", question)]  # ends of words
        cut = bounds[position - 1] if 0 < position <= len(bounds) else (0 if position == 0 else len(question))
    before, after = question[:cut], question[cut:]
    if before and not before.endswith(" "):
        before += " "
    if after and not after.startswith(" "):
        after = " " + after
    text = before + trigger + after
    start = len(before)
    spans, pos = [], start
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return text, (start, start + len(trigger)), spans


def trigger_position_of(question: str, text: str, words: Sequence[str]) -> int:
    """The smallest word index k with ``insert_trigger(question, words, k)`` giving ``text`` (the canonical
    position of a trigger inserted at a word boundary; ValueError if ``text`` is no such insertion)."""
    for k in range(len(question.split()) + 1):
        if insert_trigger(question, words, k)[0] == text:
            return k
    raise ValueError(f"{text!r} is not {question!r} with {list(words)} inserted at a word boundary")


def trigger_word_indices(text: str, span: Optional[Tuple[int, int]]) -> List[int]:
    """Indices, among ``text.split()``, of the words inside the character ``span`` (a trigger's)."""
    if span is None:
        return []
    first = len(text[:span[0]].split())
    return list(range(first, first + len(text[span[0]:span[1]].split())))


def word_suspicions(scorer, questions: Sequence[str]) -> List[List[float]]:
    """ONION's suspicion f(w) = nll(q) - nll(q without w) of every whitespace-separated word of every
    question (nats of mean per-token NLL under ``scorer.text_nll``; > 0: removing w makes q more fluent).
    One ``text_nll`` call for all the variants; a one-word question scores [0.0]."""
    variants, owners = [], []
    for q in questions:
        words = q.split()
        if len(words) < 2:
            continue
        owners.append(len(variants))
        variants += [q] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    nll = scorer.text_nll(variants).numpy() if variants else None
    out, k = [], 0
    for q in questions:
        n = len(q.split())
        if n < 2:
            out.append([0.0] * n)
            continue
        base = owners[k]
        k += 1
        out.append((nll[base] - nll[base + 1:base + 1 + n]).tolist())
    return out


def word_suspicion(scorer, question: str) -> List[float]:
    """:func:`word_suspicions` of one question (one ``text_nll`` call of its len(words) + 1 variants)."""
    return word_suspicions(scorer, [question])[0]


def suspicion_threshold(scorer, questions: Sequence[str], quantile: float, who: str = "trigger filter") -> float:
    """The ``quantile`` of :func:`word_suspicion` over every word of the clean ``questions``, at least 0 (a
    word is only suspicious when removing it lowers the perplexity); one ``text_nll`` call per question."""
    scores = [f for q in questions for f in word_suspicion(scorer, q)]
    if not scores:
        raise ValueError(f"{who}: need clean questions with at least two words to fit")
    return max(0.0, float(np.quantile(scores, quantile)))


def hotflip_scores(grad: torch.Tensor, current: torch.Tensor, embeddings: torch.Tensor,
                   vocab: Vocabulary) -> torch.Tensor:
    """First-order loss change of swapping each slot's token for each admissible token.

    Args:
        grad: loss gradient at the slot's token embedding (S, D) (S slots or samples).
        current: current embedding at the slot (S, D).
        embeddings: the tokenizer's embedding matrix (V, D).
        vocab: admissible tokens.

    Returns:
        (S, V_a) estimated loss change (negative = loss goes down).
    """
    cand = embeddings[vocab.ids.to(embeddings.device)].float()  # (V_a, D)
    g = grad.float()
    return g @ cand.T - (g * current.float()).sum(-1, keepdim=True)


ScreenFn = Callable[[List[List[str]], int], List[Dict[str, float]]]
