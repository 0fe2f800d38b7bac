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
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["admissible_vocabulary", "insert_trigger", "Vocabulary", "hotflip_scores", "TRIGGER_POSITIONS",
           "check_trigger_position", "words_of"]

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

    def without(self, words) -> "Vocabulary":
        """A copy without the given words (compared case-insensitively)."""
        banned = {w.lower() for w in words}
        keep = [i for i, w in enumerate(self.words) if w.lower() not in banned]
        if not keep:
            raise ValueError("every admissible trigger token was excluded")
        return Vocabulary(self.ids[torch.tensor(keep)], tuple(self.words[i] for i in keep))


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
