"""What a min-min run optimises and carries between hooks.

:class:`Perturbation` holds the variables (image deltas and per-sample triggers);
:class:`MinMinRun` is the state of one run handed to every hook of
:class:`~toolkit.defenses.minmin.MinMinDefense` (surrogates, perturbation,
generator, round, the round's records and a per-step cache), so hooks never
keep run state on the defense object; :func:`answer_classes` assigns the
classes class-wise noise is shared by.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...data import VQASample
from ...distributed import World
from ...engine import dataset_pixels, gather
from ...surrogates.base import Surrogate
from ...surrogates.ensemble import weighted_members
from ...triggers import answer_words, insert_trigger

__all__ = ["Perturbation", "MinMinRun", "answer_classes", "CleanPixels", "DiskDeltas", "STORE_DTYPES"]

#: value types of the disk store (:class:`DiskDeltas`) and their bytes per value
STORE_DTYPES = {"float16": 2, "uint8": 1, "float32": 4}


def _pixels(sample: VQASample) -> torch.Tensor:
    """One sample's image as float (3, H, W) in [0, 1], exactly as :func:`~toolkit.engine.dataset_pixels`."""
    return torch.tensor(sample.image).permute(2, 0, 1).float().div_(255.0)


class CleanPixels(Sequence[torch.Tensor]):
    """The clean images of ``samples`` as float (3, H, W) tensors in [0, 1], made on every access.

    A drop-in for the list :func:`~toolkit.engine.dataset_pixels` returns (same values) that holds no
    pixels: each item is converted from its sample (a lazy sample's file is decoded) when asked for.
    """

    def __init__(self, samples: Sequence[VQASample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _pixels(self.samples[i])


class DiskDeltas(Sequence[torch.Tensor]):
    """Per-sample deltas in a memory-mapped file: ``deltas[i]`` reads item i as float32 (3, H, W),
    ``deltas[i] = t`` writes it back rounded to the store's type.

    Args:
        shapes: each item's delta shape (3, H, W) (sizes may differ).
        eps: the L_inf budget (the ``uint8`` store's unit is eps / 127).
        dtype: ``"float16"`` (2 bytes a value; a stored value is the nearest float16, relative error at most
            2^-11, so at most eps / 2048 for |delta| <= eps), ``"uint8"`` (1 byte; delta quantised to the
            nearest multiple of eps / 127, error at most eps / 254) or ``"float32"`` (4 bytes, exact).
        directory: folder for the file (default: the system's temporary folder). The file lives in a fresh
            sub-folder that is removed when the store is closed or garbage-collected; on POSIX the file is
            unlinked as soon as it is mapped, so nothing is left behind even if the process is killed.

    Note: a file under a RAM-backed temporary folder (tmpfs) is memory again; give ``directory`` on a disk.
    """

    def __init__(self, shapes: Sequence[Tuple[int, ...]], eps: float, dtype: str = "float16",
                 directory: Optional[os.PathLike] = None) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
        if directory is not None and not Path(directory).is_dir():
            raise ValueError(f"store_dir {str(directory)!r} is not an existing folder")
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.dtype, self.eps = dtype, float(eps)
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.scale = np.float32(self.eps / 127.0)
        self.folder = tempfile.mkdtemp(prefix="mmguard-deltas-", dir=None if directory is None else str(directory))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        path = os.path.join(self.folder, f"deltas.{dtype}")
        total = max(int(self.offsets[-1]), 1)
        self._mm = np.memmap(path, dtype=np.dtype(dtype), mode="w+", shape=(total,))
        if dtype == "uint8":
            self._mm[:] = 128  # zero deltas
        if os.name == "posix":
            os.unlink(path)  # the mapping keeps the data; nothing to clean up if the process dies

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        raw = self._mm[self.offsets[i]:self.offsets[i + 1]]
        if self.dtype == "uint8":
            values = (raw.astype(np.float32) - np.float32(128)) * self.scale
        else:
            values = raw.astype(np.float32)
        return torch.from_numpy(values).view(self.shapes[i])

    def _index(self, i: int) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of a store of {len(self)}")
        return i % len(self)

    def __setitem__(self, i: int, value: torch.Tensor) -> None:
        i = self._index(i)
        if tuple(value.shape) != self.shapes[i]:
            raise ValueError(f"delta of item {i} must have shape {self.shapes[i]}, got {tuple(value.shape)}")
        self._mm[self.offsets[i]:self.offsets[i + 1]] = self.encode(value.detach().float().cpu().reshape(-1).numpy())

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float32 values as stored (rounded to float16, quantised to uint8 in units of eps / 127, or as is)."""
        if self.dtype == "uint8":
            return (np.clip(np.rint(values / self.scale), -127, 127) + 128).astype(np.uint8)
        return values.astype(self._mm.dtype)

    def raw(self) -> torch.Tensor:
        """The whole store as a flat tensor of its dtype, sharing the mapped memory (no copy; for checkpoints)."""
        return torch.from_numpy(self._mm)

    def load_raw(self, values: torch.Tensor) -> None:
        """Overwrite the store with :meth:`raw` output of a store of the same layout and dtype."""
        arr = values.detach().cpu().numpy().reshape(-1)
        if arr.shape != self._mm.shape or arr.dtype != self._mm.dtype:
            raise ValueError(f"checkpointed deltas ({arr.dtype}, {arr.shape[0]} values) do not fit this store "
                             f"({self._mm.dtype}, {self._mm.shape[0]} values)")
        self._mm[:] = arr

    def close(self) -> None:
        """Unmap the file and remove its folder (also done when the store is garbage-collected)."""
        self._mm = None  # type: ignore[assignment]
        self._cleanup()


class Perturbation:
    """The variables a min-min defense optimises: image deltas and (optionally) per-sample triggers.

    Two stores (``store``): ``"memory"`` keeps every clean image as float32 (``x``, a list) and every delta as
    a float32 tensor; ``"disk"`` keeps no pixels (``x`` is a :class:`CleanPixels` view that converts a sample
    when asked, so lazy samples are decoded on access) and puts per-sample deltas in a memory-mapped file
    (:class:`DiskDeltas`, ``store_dtype`` float16 / uint8 / float32, under ``store_dir`` or a temporary
    folder). Class-wise deltas are one (C, 3, H, W) tensor in memory with either store. Read and write
    pixels and deltas through :meth:`clean`, :meth:`deltas`, :meth:`set_deltas` and :meth:`map_deltas`,
    which work with both.

    Attributes:
        x: clean images, list of (3, H, W) in [0, 1] (a :class:`CleanPixels` sequence with the disk store).
        samples: the clean samples.
        labels: class of every sample (N,) long (answers or answer clusters).
        delta: per-sample list of (3, H, W) (a :class:`DiskDeltas` with the disk store), or a (C, 3, H, W)
            tensor for class-wise noise.
        triggers: per-sample word lists (None when the defense has no trigger).
        position: where triggers are inserted ("start", "end" or a word index), or "natural" when every sample
            has its own word index in ``positions``.
        positions: per-sample word indices (natural insertion, :meth:`position_of`), or None (``position``).
        banned_words: words no trigger may contain (the answers' words).
        rules: the fluency-aware search's settings and scorer (:class:`~.fluency.TriggerRules`), or None for
            the plain search (no scorer, no filter, admissible vocabulary, one position).
    """

    def __init__(self, samples: Sequence[VQASample], labels: torch.Tensor, num_classes: int, granularity: str,
                 eps: float, init: str, gen: torch.Generator, store: str = "memory",
                 store_dir: Optional[os.PathLike] = None, store_dtype: str = "float16") -> None:
        if store not in ("memory", "disk"):
            raise ValueError(f"store must be 'memory' or 'disk', got {store!r}")
        self.samples = list(samples)
        self.store = store
        self.x = dataset_pixels(self.samples) if store == "memory" else CleanPixels(self.samples)
        self.shapes = [tuple(s.image.shape) for s in self.samples]
        self.labels = labels
        self.classwise = granularity == "class"
        if self.classwise:
            if len(set(self.shapes)) > 1:
                raise ValueError(f"class-wise noise needs all images the same size; got {len(set(self.shapes))} "
                                 f"sizes (resize first or use granularity='sample')")
            shape = (num_classes,) + tuple(self.x[0].shape)
            self.delta = torch.zeros(shape) if init == "zeros" else (torch.rand(shape, generator=gen) * 2 - 1) * eps
        elif store == "disk":
            chw = [(3, h, w) for h, w, _ in self.shapes]
            self.delta = DiskDeltas(chw, eps, store_dtype, store_dir)
            if init != "zeros":  # the same draws, in the same order, as the memory store's
                for i, shape in enumerate(chw):
                    self.delta[i] = (torch.rand(shape, generator=gen) * 2 - 1) * eps
        elif init == "zeros":
            self.delta = [torch.zeros_like(t) for t in self.x]
        else:
            self.delta = [(torch.rand(t.shape, generator=gen) * 2 - 1) * eps for t in self.x]
        self.triggers: Optional[List[List[str]]] = None
        self.position: Any = "start"
        self.positions: Optional[List[int]] = None
        self.rules: Any = None
        #: words a trigger may not use: every word of every answer (a trigger must not carry a label)
        self.banned_words = answer_words(self.samples)

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

    def clean(self, idx: torch.Tensor) -> torch.Tensor:
        """Clean pixels (B, 3, H, W) in [0, 1] of the items ``idx`` (made from the samples with the disk store)."""
        return gather(self.x, idx)

    def deltas(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample deltas of the items ``idx`` (B, 3, H, W) (their classes' deltas for class-wise noise)."""
        return self.delta[self.labels[idx]] if self.classwise else gather(self.delta, idx)

    def set_deltas(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Store new per-sample deltas (B, 3, H, W) of the items ``idx`` (rounded to the disk store's type).
        Class-wise noise has no per-item deltas: assign ``delta`` (C, 3, H, W) instead."""
        if self.classwise:
            raise TypeError("class-wise noise has one delta per class: assign Perturbation.delta instead")
        for j, i in enumerate(idx.tolist()):
            self.delta[i] = values[j]

    def map_deltas(self, fn) -> None:
        """Replace every per-sample delta d_i by ``fn(d_i, x_i)`` (both (3, H, W), x_i the clean image), one
        item at a time."""
        for i in range(len(self)):
            self.delta[i] = fn(self.delta[i], self.x[i])

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        """Protected pixels (B, 3, H, W) of the items ``idx``."""
        return (self.clean(idx) + self.deltas(idx)).clamp(0, 1)

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

    def proposals(self) -> Sequence[torch.Tensor]:
        """Final protected images (3, H, W) in [0, 1]: a sequence that computes each one when it is read
        (nothing is materialised; a consumer such as :meth:`~toolkit.defenses.base.Defense.protect` holds only
        what it keeps of each)."""
        return _Proposals(self)

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (tensors, word lists and, with natural insertion, the positions).

        With the disk store, ``delta`` is ``{"disk": <flat tensor of the store's dtype>}`` sharing the mapped
        file (no copy is made; saving the checkpoint reads it from the file)."""
        delta = {"disk": self.delta.raw()} if isinstance(self.delta, DiskDeltas) else self.delta
        state = {"delta": delta, "triggers": self.triggers}
        if self.positions is not None:
            state["positions"] = list(self.positions)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (of a perturbation with the same store)."""
        delta = state["delta"]
        if isinstance(self.delta, DiskDeltas):
            if not isinstance(delta, dict) or "disk" not in delta:
                raise ValueError("this checkpoint holds in-memory deltas; resume it with store='memory'")
            self.delta.load_raw(delta["disk"])
        elif isinstance(delta, dict):
            raise ValueError("this checkpoint holds disk-store deltas; resume it with store='disk'")
        else:
            self.delta = delta
        self.triggers = state["triggers"]
        if state.get("positions") is not None:
            self.positions = list(state["positions"])


class _Proposals(Sequence[torch.Tensor]):
    """:meth:`Perturbation.proposals`: protected image i is computed when item i is read."""

    def __init__(self, pert: Perturbation) -> None:
        self.pert = pert

    def __len__(self) -> int:
        return len(self.pert)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.pert.pixels(torch.tensor([i % len(self)]))[0]


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
