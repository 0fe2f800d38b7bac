"""Weighted ensembles of surrogates behind the same :class:`Surrogate` interface.

Transfer (gray / black box) improves when a protection is optimised against
several models at once; an :class:`Ensemble` lets any defense do that without
knowing it. Each member keeps its own processor, so members of different
families and input resolutions combine: every member receives the same raw
pixels and resizes them itself.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..data import VQASample
from .base import Surrogate

__all__ = ["Ensemble", "weighted_members"]


class Ensemble(Surrogate):
    """Weighted sum of member losses; capabilities = those every member has.

    Args:
        members: two or more surrogates (any families).
        weights: non-negative, one per member, normalised to sum 1 (uniform by default).

    ``loss`` is sum_i w_i * loss_i (per sample); ``correct`` requires every member
    to be correct; ``answer`` asks the first member; ``trainable_parameters`` and
    LoRA calls go to every member.
    """

    family = "ensemble"

    def __init__(self, members: Sequence[Surrogate], weights: Optional[Sequence[float]] = None) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two surrogates, got {len(members)}")
        for m in members:
            if not isinstance(m, Surrogate):
                raise TypeError(f"ensemble members must be Surrogate objects, got {type(m).__name__}")
        if weights is None:
            weights = [1.0] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        if any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        total = sum(weights)
        self.members = members
        self.weights = [w / total for w in weights]
        self.capabilities = frozenset.intersection(*(frozenset(m.capabilities) for m in members))
        self.device = members[0].device
        self.dtype = members[0].dtype
        self.path = members[0].path

    def _load(self) -> torch.nn.Module:  # pragma: no cover - members are loaded already
        raise NotImplementedError

    @property
    def image_size(self) -> tuple:
        """The largest (height, width) any member sees (datasets are upscaled to it)."""
        sizes = [m.image_size for m in self.members]
        return max(sizes, key=lambda s: s[0] * s[1])

    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        loss, correct = None, None
        for w, m in zip(self.weights, self.members):
            l_i, c_i = m.loss_and_correct(pixels, samples)
            l_i = w * l_i.to(pixels.device, torch.float32)
            loss = l_i if loss is None else loss + l_i
            c_i = c_i.to(pixels.device)
            correct = c_i if correct is None else correct & c_i
        return loss, correct

    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8) -> List[str]:
        return self.members[0].answer(pixels, questions, max_new_tokens)

    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        return [p for m in self.members for p in m.trainable_parameters(mode)]

    @contextlib.contextmanager
    def _grad_mode(self, train: bool, params: Sequence[torch.nn.Parameter]) -> Iterator["Ensemble"]:
        with contextlib.ExitStack() as stack:
            for m in self.members:
                own = {id(p) for p in m.model.parameters()}
                stack.enter_context(m._grad_mode(train, [p for p in params if id(p) in own]))
            yield self

    def attach_lora(self, settings: Any = None) -> None:
        """Attach a fresh adapter to every member: ``settings`` for all of them, or a list or tuple with
        one entry per member (e.g. a rank per family, as the paper gives r8 / r16 per surrogate)."""
        per = list(settings) if isinstance(settings, (list, tuple)) else [settings] * len(self.members)
        if len(per) != len(self.members):
            raise ValueError(f"{len(per)} LoRA settings for {len(self.members)} ensemble members")
        for m, st in zip(self.members, per):
            m.attach_lora(st) if st is not None else m.attach_lora()

    def detach_lora(self, merge: bool = False) -> None:
        """Remove every member's adapter."""
        for m in self.members:
            m.detach_lora(merge=merge)

    def reinitialize(self, seed: int) -> None:
        """Re-initialise every member (member i with ``seed + i``)."""
        for i, m in enumerate(self.members):
            m.reinitialize(seed + i)

    def describe(self) -> Dict[str, Any]:
        return {"family": "ensemble", "weights": self.weights, "members": [m.describe() for m in self.members],
                "parameters": sum(d["parameters"] for d in (m.describe() for m in self.members))}

    def __repr__(self) -> str:
        return f"Ensemble({self.members!r}, weights={self.weights})"


def weighted_members(surrogates: Sequence[Surrogate]) -> List[Tuple[Surrogate, float]]:
    """(surrogate, weight) pairs of a surrogate list, ensembles expanded into their weighted members.

    Every entry of ``surrogates`` counts 1/len(surrogates); an :class:`Ensemble` splits its share
    by its own weights, so the weights of the result sum to 1.
    """
    out: List[Tuple[Surrogate, float]] = []
    for s in surrogates:
        if isinstance(s, Ensemble):
            out += [(m, w / len(surrogates)) for m, w in zip(s.members, s.weights)]
        else:
            out.append((s, 1.0 / len(surrogates)))
    return out
