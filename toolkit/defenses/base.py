"""The :class:`Defense` base class (data protections) and the ``DEFENSES`` registry.

Threat model: the data owner releases (x + delta, question, answer) and
controls nothing after release; the attacker fine-tunes any model on it. A
defense optimises delta (and later a text trigger) against one or more
surrogates it has white-box access to.

``Defense.protect`` is final (a subclass that overrides it is refused when the
class is created): it validates the data, surrogates and capabilities, calls the
subclass's ``_protect`` (which only *proposes* protected images, and questions
with inserted triggers, as a :class:`Proposal`), then enforces the L_inf budget
after uint8 rounding and checks every released question is the original plus at
most ``max_trigger_tokens`` inserted words, so no subclass can exceed either.
"""
from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data import VQADataset
from ..registry import Config, Registry, check_range, make_config
from ..surrogates.base import Surrogate

__all__ = ["Defense", "DefenseConfig", "Protection", "Proposal", "DEFENSES", "enforce_budget"]

log = logging.getLogger(__name__)

DEFENSES: Registry = Registry("defense")


@dataclass(frozen=True, kw_only=True)
class DefenseConfig(Config):
    """Settings shared by every defense.

    Attributes:
        eps: L_inf budget in [0, 1] image units, in (0, 1] (8/255 by default).
        seed: seed of every random choice the defense makes.
    """

    eps: float = 8 / 255
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("eps", self.eps, 0.0, 1.0, low_open=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass
class Proposal:
    """What :meth:`Defense._protect` proposes; :meth:`Defense.protect` enforces the budgets on it.

    Attributes:
        images: one proposed image per sample, in dataset order: float [0, 1] (3, H, W) or (H, W, 3), or
            uint8 (H, W, 3).
        questions: the released questions (the originals with the triggers inserted), or None (unchanged).
        triggers: per sample ``{"words": [...], "position": ...}``, given together with ``questions``.
        info: defense-specific records (rounds run, convergence history, ...) for :attr:`Protection.info`.
    """

    images: Sequence[Union[np.ndarray, torch.Tensor]]
    questions: Optional[Sequence[str]] = None
    triggers: Optional[Sequence[Dict[str, Any]]] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.questions is None) != (self.triggers is None):
            raise ValueError("a Proposal gives questions and triggers together, or neither")


@dataclass
class Protection:
    """The result of :meth:`Defense.protect`.

    Attributes:
        dataset: the protected samples (uint8 images within budget, released text).
        source: the clean input dataset (same order and ids).
        defense: registry name; config: the defense config as a dict.
        surrogates: descriptions of the surrogates used.
        seconds: wall time of ``_protect``.
        info: defense-specific records (rounds run, convergence history, ...).
    """

    dataset: VQADataset
    source: VQADataset
    defense: str
    config: Dict[str, Any]
    surrogates: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    info: Dict[str, Any] = field(default_factory=dict)

    def deltas(self) -> List[np.ndarray]:
        """Per-sample perturbation as released, float (H, W, 3) in [0, 1] units."""
        return [(p.image.astype(np.float32) - s.image.astype(np.float32)) / 255.0
                for p, s in zip(self.dataset, self.source)]


def enforce_budget(source: np.ndarray, proposal: Union[np.ndarray, torch.Tensor], eps: float) -> np.ndarray:
    """Round a proposed image to uint8 and clip it into the L_inf ball around ``source``.

    Args:
        source: clean uint8 (H, W, 3).
        proposal: float (H, W, 3) or (3, H, W) in [0, 1], or uint8 (H, W, 3).
        eps: budget in [0, 1] units; the largest allowed change is floor(eps * 255) levels.

    Returns:
        uint8 (H, W, 3) with ``|out - source| <= eps * 255`` everywhere.
    """
    if isinstance(proposal, torch.Tensor):
        proposal = proposal.detach().float().cpu().numpy()
    arr = np.asarray(proposal)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.shape != source.shape:
        raise ValueError(f"proposal shape {arr.shape} != source shape {source.shape}")
    if arr.dtype != np.uint8:
        if not np.isfinite(arr).all():
            raise ValueError("proposal has non-finite values")
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0)
    levels = int(math.floor(eps * 255.0 + 1e-6))
    src = source.astype(np.int16)
    out = np.clip(arr.astype(np.int16), src - levels, src + levels)
    return np.clip(out, 0, 255).astype(np.uint8)


class Defense(ABC):
    """Base class of every data protection.

    Subclasses declare ``Config`` (a subclass of :class:`DefenseConfig`),
    ``requires`` (surrogate capabilities needed; empty for surrogate-free
    defenses) and implement :meth:`_protect`.
    """

    Config: ClassVar[type] = DefenseConfig
    requires: ClassVar[Tuple[str, ...]] = ()
    needs_surrogate: ClassVar[bool] = False
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "protect" in vars(cls):
            raise TypeError(f"{cls.__qualname__} overrides Defense.protect, which is final (it enforces the budgets); "
                            "implement _protect and return a Proposal instead")

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, f"defense {getattr(self, 'name', type(self).__name__)!r}", config)

    def protect(self, dataset: VQADataset, surrogates: Union[Surrogate, Sequence[Surrogate], None] = None,
                progress: bool = False, checkpoint: Union[str, os.PathLike, None] = None) -> Protection:
        """Protect ``dataset`` (not mutated) against ``surrogates``; budgets enforced after rounding.

        Args:
            dataset: the clean samples.
            surrogates: one surrogate, a list, or an :class:`~toolkit.surrogates.Ensemble`.
            progress: show a progress bar.
            checkpoint: file for per-round state (iterative defenses); an interrupted
                run given the same file resumes where it stopped.
        """
        if not isinstance(dataset, VQADataset):
            raise TypeError(f"dataset must be a VQADataset, got {type(dataset).__name__}")
        dataset.require_nonempty()
        if surrogates is None:
            surrogates = []
        elif isinstance(surrogates, Surrogate):
            surrogates = [surrogates]
        surrogates = list(surrogates)
        if self.needs_surrogate and not surrogates:
            raise ValueError(f"defense {self.name!r} needs at least one surrogate")
        for s in surrogates:
            if not isinstance(s, Surrogate):
                raise TypeError(f"surrogates must be Surrogate objects, got {type(s).__name__}")
            s.require(*self.requires, who=f"defense {self.name!r}")
        start = time.perf_counter()
        proposal = self._protect(dataset, surrogates, progress, checkpoint)
        seconds = time.perf_counter() - start
        if isinstance(proposal, tuple) and len(proposal) == 2:  # (images, info): an image-only proposal
            images, info = proposal
            if "triggers" in info or "questions" in info:
                raise TypeError(f"{self.name}: return Proposal(images, questions=..., triggers=...) to release "
                                "questions, not 'questions'/'triggers' keys of info")
            proposal = Proposal(images, info=dict(info))
        if not isinstance(proposal, Proposal):
            raise TypeError(f"{self.name}: _protect must return a Proposal, got {type(proposal).__name__}")
        if len(proposal.images) != len(dataset):
            raise RuntimeError(f"{self.name}: {len(proposal.images)} proposals for {len(dataset)} samples")
        protected = [s.with_(image=enforce_budget(s.image, p, self.config.eps))
                     for s, p in zip(dataset, proposal.images)]
        if proposal.triggers is not None:
            protected = self._apply_triggers(dataset, protected, proposal.questions, proposal.triggers)
        return Protection(
            dataset=dataset.replace_samples(protected, f"{dataset.name}+{self.name}"), source=dataset,
            defense=self.name, config=self.config.to_dict(), surrogates=[s.describe() for s in surrogates],
            seconds=seconds, info=dict(proposal.info))

    def _apply_triggers(self, dataset, protected, questions, triggers):
        """Check each released question is the original with at most ``max_trigger_tokens`` words inserted."""
        from ..triggers import insert_trigger

        limit = getattr(self.config, "max_trigger_tokens", None)
        if limit is None:
            raise RuntimeError(f"{self.name}: proposes triggers but its config has no max_trigger_tokens")
        out = []
        for src, prot, text, trig in zip(dataset, protected, questions, triggers):
            words = list(trig["words"])
            if len(words) > limit:
                raise RuntimeError(f"{self.name}: trigger {words} longer than max_trigger_tokens={limit}")
            expected, span, _ = insert_trigger(src.question, words, trig["position"])
            if text != expected:
                raise RuntimeError(f"{self.name}: released question {text!r} is not the original with the "
                                   f"trigger inserted")
            meta = dict(prot.meta)
            meta["trigger"] = {"words": words, "position": trig["position"], "span": list(span) if span else None}
            out.append(prot.with_(question=text, meta=meta))
        return out

    @abstractmethod
    def _protect(self, dataset: VQADataset, surrogates: List[Surrogate], progress: bool,
                 checkpoint: Union[str, os.PathLike, None] = None) -> Proposal:
        """Propose protected images (and questions): a :class:`Proposal`, or ``(images, info)`` when only
        images change. ``checkpoint`` is the file for per-round state of an iterative defense (None: none)."""
