"""The :class:`Surrogate` interface: one model behind pixel-space inputs.

A surrogate serves two roles with the same class: the model a defense
optimises against, and the victim an attacker fine-tunes. Everything
model-specific (preprocessing, chat template, token positions) stays inside;
callers pass images as float tensors in [0, 1] (N, 3, H, W) and samples.

Threat-model vocabulary: white-box = the defense's surrogate is the victim;
gray-box = same family, other weights; black-box = other family.
"""
from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..data import VQASample

__all__ = ["Surrogate", "CAPABILITIES", "resolve_dtype", "resolve_device", "CapabilityError", "LoraSettings"]

#: Capability names a surrogate may declare:
#: ``image_grad`` (loss differentiable in the pixels), ``text`` (the question enters the loss),
#: ``token_grad`` (input-embedding gradients, for trigger search), ``attentions`` (language-model
#: attention weights), ``image_attention`` (text tokens reach image tokens by self-attention; Mllama's
#: cross-attention does not), ``trainable``, ``generate`` (free-form answers), ``lora`` (peft adapters).
CAPABILITIES = frozenset({"image_grad", "text", "token_grad", "attentions", "image_attention", "trainable",
                          "generate", "lora"})

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class CapabilityError(TypeError):
    """A component was given a surrogate lacking a capability it needs."""


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """Map "float32" / "bfloat16" / "float16" (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """Validate a device string ("cpu", "cuda", "cuda:N"); never assumes CUDA exists."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available")
    return dev


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft).

    Attributes:
        rank: adapter rank r.
        alpha: scaling numerator (effective scale alpha / r).
        dropout: dropout on the adapter input.
        target: regex over module names, or None for every attention+MLP projection of the language model.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank must be an integer >= 1, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")


class Surrogate(ABC):
    """Base class of every wrapped model (LVLM, CLIP, classifier).

    Args:
        path: local folder in the ``save_pretrained`` layout.
        device: "cpu", "cuda" or "cuda:N".
        dtype: "float32" or "bfloat16" (also "float16").
        gradient_checkpointing: trade compute for memory in training and PGD.

    Subclasses set ``family`` and ``capabilities`` and implement :meth:`loss`,
    :meth:`answer` and :meth:`trainable_parameters`.
    """

    family: ClassVar[str] = "base"
    capabilities: ClassVar[FrozenSet[str]] = frozenset()
    #: True when the loss scores each image against the batch's other captions (CLIP's contrastive loss), so
    #: a defense may shuffle captions to break the image-caption pairing (MEM's ``shuffle_captions: auto``)
    contrastive: ClassVar[bool] = False
    name: ClassVar[str]

    def __init__(self, path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu",
                 dtype: Union[str, torch.dtype] = "float32", gradient_checkpointing: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"surrogate folder not found: {self.path}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.model: torch.nn.Module = self._load()
        self.model.to(device=self.device, dtype=self.dtype)
        self.model.eval()
        if self.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable()

    # ----------------------------------------------------------------- subclass API
    @abstractmethod
    def _load(self) -> torch.nn.Module:
        """Load and return the model (and any processor state) from ``self.path``."""

    @property
    @abstractmethod
    def image_size(self) -> tuple:
        """(height, width) the model sees after preprocessing; datasets are upscaled to it."""

    @abstractmethod
    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample training loss (N,), differentiable w.r.t. ``pixels`` (N, 3, H, W) in [0, 1],
        and whether each sample's answer is reproduced exactly under teacher forcing (N,) bool.

        For an LVLM the loss is the mean next-token NLL over the answer tokens
        (prompt and image tokens masked), the answer followed by end-of-sequence;
        "correct" means every answer token (and the end token) is the argmax.
        """

    def loss(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Per-sample training loss (N,) (see :meth:`loss_and_correct`)."""
        return self.loss_and_correct(pixels, samples)[0]

    @abstractmethod
    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8) -> List[str]:
        """Greedy answers (decoded text) for images (N, 3, H, W) in [0, 1] and questions."""

    @abstractmethod
    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        """Parameters an attacker trains: ``"full"``, ``"projector"`` or ``"lora"`` (attached adapter)."""

    # ----------------------------------------------------------------- shared mechanics
    def require(self, *needed: str, who: str = "this component") -> "Surrogate":
        """Raise :class:`CapabilityError` unless every capability in ``needed`` is declared; returns ``self``.

        What each capability promises beyond this class (the methods a defense may then call) is
        declared in :mod:`toolkit.surrogates.capabilities`.
        """
        missing = [c for c in needed if c not in self.capabilities]
        if missing:
            raise CapabilityError(
                f"{who} needs capabilities {missing} that surrogate {self.family!r} ({self.path}) "
                f"lacks; it has {sorted(self.capabilities)}")
        return self

    @contextlib.contextmanager
    def _grad_mode(self, train: bool, params: Sequence[torch.nn.Parameter]) -> Iterator["Surrogate"]:
        """Set train/eval mode and make exactly ``params`` require gradients; restore both after."""
        all_params = list(self.model.parameters())
        flags = [p.requires_grad for p in all_params]
        was_training = self.model.training
        ids = {id(p) for p in params}
        for p in all_params:
            p.requires_grad_(id(p) in ids)
        self.model.train(train)
        try:
            yield self
        finally:
            for p, flag in zip(all_params, flags):
                p.requires_grad_(flag)
            self.model.train(was_training)

    def frozen(self):
        """Eval mode with every parameter ``requires_grad=False`` (input gradients only); restored after."""
        return self._grad_mode(False, ())

    def training(self, params: Sequence[torch.nn.Parameter]):
        """Train mode with only ``params`` requiring gradients; restored after."""
        return self._grad_mode(True, params)

    def to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """Move pixels to the surrogate's device (keeps float32 for the processor)."""
        return pixels.to(self.device, torch.float32)

    def describe(self) -> Dict[str, Any]:
        """A JSON-able description for manifests and result rows."""
        return {"family": self.family, "path": str(self.path), "dtype": str(self.dtype).replace("torch.", ""),
                "parameters": int(sum(p.numel() for p in self.model.parameters()))}

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Save the (possibly fine-tuned) model and its processor in the ``save_pretrained`` layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.device}, dtype={self.dtype})"
