"""What a min-min run optimises and carries between hooks.

:class:`Perturbation` holds the variables (image deltas and per-sample triggers);
:class:`MinMinRun` is the state of one run handed to every hook of
:class:`~toolkit.defenses.minmin.MinMinDefense` (surrogates, perturbation,
generator, round, the round's records and a per-step cache), so hooks never
keep run state on the defense object; :func:`answer_classes` assigns the
classes class-wise noise is shared by.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ...data import VQASample
from ...distributed import World
from ...engine import dataset_pixels, gather
from ...surrogates.base import Surrogate
from ...surrogates.ensemble import weighted_members
from ...triggers import insert_trigger, words_of

__all__ = ["Perturbation", "MinMinRun", "answer_classes"]


class Perturbation:
    """The variables a min-min defense optimises: image deltas and (optionally) per-sample triggers.

    Attributes:
        x: clean images, list of (3, H, W) in [0, 1].
        samples: the clean samples.
        labels: class of every sample (N,) long (answers or answer clusters).
        delta: per-sample list of (3, H, W), or a (C, 3, H, W) tensor for class-wise noise.
        triggers: per-sample word lists (None when the defense has no trigger).
        position: where triggers are inserted ("start", "end" or a word index), or "natural" when every sample
            has its own word index in ``positions``.
        positions: per-sample word indices (natural insertion, :meth:`position_of`), or None (``position``).
        banned_words: words no trigger may contain (the answers' words).
        rules: the fluency-aware search's settings and scorer (:class:`~.fluency.TriggerRules`), or None for
            the plain search (no scorer, no filter, admissible vocabulary, one position).
    """

    def __init__(self, samples: Sequence[VQASample], labels: torch.Tensor, num_classes: int, granularity: str,
                 eps: float, init: str, gen: torch.Generator) -> None:
        self.samples = list(samples)
        self.x = dataset_pixels(self.samples)
        self.shapes = [tuple(s.image.shape) for s in self.samples]
        self.labels = labels
        self.classwise = granularity == "class"
        if self.classwise:
            if len(set(self.shapes)) > 1:
                raise ValueError(f"class-wise noise needs all images the same size; got {len(set(self.shapes))} "
                                 f"sizes (resize first or use granularity='sample')")
            shape = (num_classes,) + tuple(self.x[0].shape)
            self.delta = torch.zeros(shape) if init == "zeros" else (torch.rand(shape, generator=gen) * 2 - 1) * eps
        elif init == "zeros":
            self.delta = [torch.zeros_like(t) for t in self.x]
        else:
            self.delta = [(torch.rand(t.shape, generator=gen) * 2 - 1) * eps for t in self.x]
        self.triggers: Optional[List[List[str]]] = None
        self.position: Any = "start"
        self.positions: Optional[List[int]] = None
        self.rules: Any = None
        #: words a trigger may not use: every word of every answer (a trigger must not carry a label)
        self.banned_words = set().union(*(words_of(s.answer) for s in self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def position_of(self, i: int) -> Any:
        """Where item ``i``'s trigger is inserted: its own word index (natural insertion) or ``position``."""
        return self.positions[i] if self.positions is not None else self.position

    def random_triggers(self, surrogate, length: int, position: Any, gen: torch.Generator,
                        check: Optional[Sequence] = None, attempts: int = 50) -> None:
        """Start every sample with ``length`` random admissible words of ``surrogate``'s trigger vocabulary
        (answer words excluded), inserted at ``position``. With ``check`` (surrogates), a sample whose
        trigger has a word that is not exactly one token in each of them *in place* is drawn again."""
        vocab = surrogate.trigger_vocabulary().without(self.banned_words)
        self.position = position
        self.triggers = [[] for _ in range(len(self))]
        todo = list(range(len(self)))
        for _ in range(attempts):
            picks = torch.randint(0, len(vocab), (len(todo), length), generator=gen)
            for i, row in zip(todo, picks.tolist()):
                self.triggers[i] = [vocab.words[j] for j in row]
            if not check:
                return
            ok = self.single_token_words(check, todo, [self.triggers[i] for i in todo])
            todo = [i for i, good in zip(todo, ok) if not good]
            if not todo:
                return
        raise ValueError(f"no trigger of {length} single-token words found for {len(todo)} samples after "
                         f"{attempts} draws (the surrogates' tokenizers split too many admissible words here)")

    def single_token_words(self, surrogates: Sequence, rows: Sequence[int], word_lists: Sequence[Sequence[str]],
                           slot: Optional[int] = None, positions: Optional[Sequence[Any]] = None) -> List[bool]:
        """Whether each (dataset item, words) keeps every inserted word (or only word ``slot``) as exactly one
        token of every surrogate once inserted into the item's question: the paper's token budget counts
        tokens, and a word split in context (e.g. at the start of a turn, with no leading space) would
        spend more than one. ``positions``: where each word list goes (default: the item's own
        :meth:`position_of`). Tokenisation only, no forward pass."""
        samples, spans, owner = [], [], []
        for r, (i, words) in enumerate(zip(rows, word_lists)):
            where = self.position_of(i) if positions is None else positions[r]
            text, _, word_spans = insert_trigger(self.samples[i].question, list(words), where)
            chosen = word_spans if slot is None else [word_spans[slot]]
            for span in chosen:
                samples.append(self.samples[i].with_(question=text))
                spans.append(span)
                owner.append(r)
        ok = [True] * len(rows)
        if not samples:
            return ok
        by_shape: Dict[Tuple[int, ...], List[int]] = {}
        for k, r in enumerate(owner):
            by_shape.setdefault(self.shapes[rows[r]], []).append(k)
        for s in weighted_members(surrogates):
            for shape, ks in by_shape.items():
                counts = s[0].trigger_token_mask(tuple(shape[:2]), [samples[k] for k in ks],  # shape: (H, W, 3)
                                                 [spans[k] for k in ks]).sum(1).tolist()
                for k, c in zip(ks, counts):
                    if c != 1:
                        ok[owner[k]] = False
        return ok

    def deltas(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample deltas of the items ``idx`` (B, 3, H, W)."""
        return self.delta[self.labels[idx]] if self.classwise else gather(self.delta, idx)

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        """Protected pixels (B, 3, H, W) of the items ``idx``."""
        return (gather(self.x, idx) + self.deltas(idx)).clamp(0, 1)

    def question(self, i: int, words: Optional[Sequence[str]] = None, position: Any = None
                 ) -> Tuple[str, Optional[Tuple[int, int]]]:
        """Question of item ``i`` with its trigger (or ``words``) inserted at its position (or ``position``), and
        the trigger's character span."""
        words = self.triggers[i] if words is None and self.triggers is not None else (words or [])
        where = self.position_of(i) if position is None else position
        text, span, _ = insert_trigger(self.samples[i].question, words, where)
        return text, span

    def batch_samples(self, idx: torch.Tensor) -> Tuple[List[VQASample], List[Optional[Tuple[int, int]]]]:
        """Samples of ``idx`` with their current triggers inserted, and the trigger spans."""
        out, spans = [], []
        for i in idx.tolist():
            text, span = self.question(i)
            out.append(self.samples[i].with_(question=text) if span is not None else self.samples[i])
            spans.append(span)
        return out, spans

    def proposals(self) -> List[torch.Tensor]:
        """Final protected images (3, H, W) in [0, 1]."""
        return [self.pixels(torch.tensor([i]))[0] for i in range(len(self))]

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (tensors, word lists and, with natural insertion, the positions)."""
        state = {"delta": self.delta, "triggers": self.triggers}
        if self.positions is not None:
            state["positions"] = list(self.positions)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.delta, self.triggers = state["delta"], state["triggers"]
        if state.get("positions") is not None:
            self.positions = list(state["positions"])


def answer_classes(samples: Sequence[VQASample], clusters: int, surrogates, gen: torch.Generator
                   ) -> Tuple[torch.Tensor, int]:
    """Class of every sample: distinct answers, or ``clusters`` k-means clusters of answer embeddings.

    Clusters use the mean input-embedding of each answer's tokens under the first
    surrogate that has a tokenizer and an embedding matrix (k-means, 20 Lloyd
    iterations, seeded); otherwise answers are bucketed by their sorted order.
    """
    answers = sorted({s.answer for s in samples})
    if not clusters or clusters >= len(answers):
        index = {a: i for i, a in enumerate(answers)}
        return torch.tensor([index[s.answer] for s in samples]), len(answers)
    feats = None
    for s in surrogates:
        tok = getattr(s, "tokenizer", None)
        if tok is not None and hasattr(s, "embedding_matrix"):
            emb = s.embedding_matrix().detach().float().cpu()
            feats = torch.stack([emb[torch.tensor(_token_ids(tok, a))].mean(0) for a in answers])
            break
    if feats is None:
        assign = torch.arange(len(answers)) * clusters // len(answers)
    else:
        centers = feats[torch.randperm(len(answers), generator=gen)[:clusters]].clone()
        for _ in range(20):
            assign = torch.cdist(feats, centers).argmin(1)
            for c in range(clusters):
                if (assign == c).any():
                    centers[c] = feats[assign == c].mean(0)
    index = {a: int(assign[i]) for i, a in enumerate(answers)}
    return torch.tensor([index[s.answer] for s in samples]), clusters


def _token_ids(tokenizer, text: str) -> List[int]:
    """Ids of ``text`` without special tokens, for Hugging Face and open_clip tokenizers."""
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        return list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
    return list(tokenizer.encode(text))


@dataclass
class MinMinRun:
    """The state of one min-min run, handed to every hook of :class:`~toolkit.defenses.minmin.MinMinDefense`.

    Attributes:
        surrogates: the surrogates the run optimises against (ensembles not expanded).
        pert: the variables (image deltas, triggers).
        gen: the run's generator; every random choice of a hook is drawn from it.
        round: the current round (0-based).
        stats: this round's records; hooks may add numbers (e.g. trigger-pass counts) that land in
            ``info["history"]``. Cleared at the start of every round.
        step_cache: scratch valid while the surrogates are frozen for one step (e.g. CRS's clean passes);
            the loop clears it before the image step, the text step and the scoring.
        world: the process group of a data-parallel run (:class:`~toolkit.distributed.World`), or None in
            one process; the loop splits the work by it, hooks need not look at it.
    """

    surrogates: List[Surrogate]
    pert: Perturbation
    gen: torch.Generator
    round: int = 0
    stats: Dict[str, float] = field(default_factory=dict)
    step_cache: Dict[str, Any] = field(default_factory=dict)
    world: Optional[World] = None

    @property
    def weighted(self) -> List[Tuple[Surrogate, float]]:
        """(surrogate, weight) pairs with ensembles expanded into their members (weights sum to 1)."""
        return weighted_members(self.surrogates)

    def new_step(self) -> None:
        """Forget the step cache (the surrogates are about to change or a new step starts)."""
        self.step_cache.clear()
