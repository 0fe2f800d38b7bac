"""What each surrogate capability promises: the methods a component may call once ``require()`` passed.

:class:`~toolkit.surrogates.base.Surrogate` declares what every surrogate has
(loss, answers, trainable parameters, save). A capability name in
``Surrogate.capabilities`` additionally promises the members of its protocol
below; ``tests/test_surrogate_contract.py`` checks every registered family
against them, so a defense written against a protocol works with any family
that declares the capability.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

from ..data import VQASample
from .base import LoraSettings

__all__ = ["Restartable", "LoraAdaptable", "TriggerSearchable", "AttentionMaps", "TextScorer",
           "CAPABILITY_PROTOCOLS", "missing_members"]


@runtime_checkable
class Restartable(Protocol):
    """``trainable``: the weights can be re-drawn (min-min restarts with ``restart_init: random``)."""

    def reinitialize(self, seed: int) -> None:
        """Re-draw the trainable weights from their initialisers, seeded."""


@runtime_checkable
class LoraAdaptable(Protocol):
    """``lora``: peft adapters can be attached (only they train) and removed (optionally merged)."""

    def attach_lora(self, settings: LoraSettings = ...) -> None:
        """Attach fresh adapters (:class:`LoraSettings`)."""

    def detach_lora(self, merge: bool = False) -> None:
        """Remove the adapters, merging them into the base weights when ``merge``."""


@runtime_checkable
class TriggerSearchable(Protocol):
    """``token_grad``: what a HotFlip trigger search needs (MMGuard, MEM).

    ``forward_samples`` returns an object with ``loss`` (N,) and, with
    ``embedding_grad``, ``embeddings`` (N, L, D) whose ``.grad`` a backward pass fills;
    ``trigger_token_mask`` marks, per sample, the token positions of a word span of its question.
    """

    tokenizer: Any

    def trigger_vocabulary(self) -> Any:
        """The admissible trigger words and their token ids (:class:`toolkit.triggers.Vocabulary`)."""

    def embedding_matrix(self) -> torch.Tensor:
        """Input-embedding table (V, D)."""

    def trigger_token_mask(self, image_hw: Tuple[int, int], samples: Sequence[VQASample],
                           spans: Sequence[Optional[Tuple[int, int]]]) -> torch.Tensor:
        """(N, L) bool: the tokens of each sample's word span."""

    def forward_samples(self, pixels: torch.Tensor, samples: Sequence[VQASample],
                        trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None, *,
                        attention_layers: int = 0, embedding_grad: bool = False,
                        image_index: Optional[torch.Tensor] = None) -> Any:
        """One differentiable forward pass over samples (see the family's result type); with ``image_index``
        (N,), ``pixels`` holds distinct images and sample n sees ``pixels[image_index[n]]``."""


@runtime_checkable
class AttentionMaps(Protocol):
    """``attentions``: language-model attention weights and where each image token sits in the image."""

    def forward_samples(self, pixels: torch.Tensor, samples: Sequence[VQASample],
                        trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None, *,
                        attention_layers: int = 0, embedding_grad: bool = False,
                        image_index: Optional[torch.Tensor] = None) -> Any:
        """Forward pass whose result's ``attentions`` holds the first ``attention_layers`` layers'
        (N, heads, L, L) probabilities and ``batch.image_mask`` the image-token positions."""

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """(T, 4) pixel boxes (top, left, bottom, right) of the T image tokens for an input of that size."""


@runtime_checkable
class TextScorer(Protocol):
    """Anything that scores text with a language model (a trigger filter's scorer): every LVLM surrogate,
    :class:`toolkit.attacks.NgramLM`."""

    def text_nll(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean per-token negative log-likelihood of each text (N,)."""


#: capability name -> the protocol a surrogate declaring it implements
CAPABILITY_PROTOCOLS: Dict[str, type] = {"trainable": Restartable, "lora": LoraAdaptable,
                                         "token_grad": TriggerSearchable, "attentions": AttentionMaps}


def missing_members(surrogate: Any, capability: str) -> Tuple[str, ...]:
    """Members of ``capability``'s protocol that ``surrogate`` (an instance or a class) lacks (empty: none)."""
    protocol = CAPABILITY_PROTOCOLS.get(capability)
    if protocol is None:
        return ()
    members = [m for m in vars(protocol) if not m.startswith("_")] + list(getattr(protocol, "__annotations__", {}))
    return tuple(sorted({m for m in members if not hasattr(surrogate, m)}))
