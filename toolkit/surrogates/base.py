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
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..data import VQASample

__all__ = ["Surrogate", "CAPABILITIES", "resolve_dtype", "resolve_device", "CapabilityError", "LoraSettings",
           "Reinitializable", "ConfigAndWeightsFolder"]

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
    :meth:`answer` and :meth:`trainable_parameters`. A family whose differentiable
    processor has a fixed output size stores it as ``self.image_processor`` when
    loading and gets :attr:`image_size` and :meth:`pixel_inputs` from here.
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
    def image_size(self) -> tuple:
        """(height, width) the model sees after preprocessing; datasets are upscaled to it.

        Default: the ``output_size`` of the family's ``image_processor`` (a fixed-size
        differentiable processor set when loading); families whose processed size
        depends on the raw image override it.
        """
        processor = getattr(self, "image_processor", None)
        if processor is None:
            raise NotImplementedError(f"{type(self).__name__} has no image_processor; it must define image_size")
        return tuple(processor.output_size)

    def pixel_inputs(self, pixels: torch.Tensor) -> Any:
        """The model's image input from raw (N, 3, H, W) in [0, 1] (differentiable).

        Default: the family's ``image_processor`` applied on the surrogate's device,
        cast to the model dtype: normalised (N, 3, h, w). LVLMs return a dict of model
        keyword inputs instead (:meth:`HFVisionLanguageSurrogate.pixel_inputs`).
        """
        return self.image_processor(self.to_device(pixels)).to(self.dtype)

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
        if self.gradient_checkpointing and not train:
            self.checkpoint_frozen()
        try:
            yield self
        finally:
            for p, flag in zip(all_params, flags):
                p.requires_grad_(flag)
            self.model.train(was_training)

    def checkpoint_frozen(self) -> None:
        """Hook run on entering :meth:`frozen` with ``gradient_checkpointing``: make the model's checkpointing
        act in eval mode too (PGD and trigger-search input gradients), where a library only checkpoints in
        train mode. Default: nothing (the library checkpoints regardless of the mode)."""

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

    def token_embeddings(self) -> torch.nn.Module:
        """The token-embedding module whose output :meth:`_capture_embeddings` captures (hook of the
        ``token_grad`` families; the default has none)."""
        raise NotImplementedError(f"{type(self).__name__} has no token embeddings")

    @contextlib.contextmanager
    def _capture_embeddings(self, store: List[torch.Tensor]) -> Iterator[None]:
        """Replace the output of :meth:`token_embeddings` (N, L, D) by a leaf requiring grad, appended to
        ``store`` (its ``.grad`` is filled by a backward pass)."""
        def hook(module, args, output):
            leaf = output.detach().requires_grad_(True)
            store.append(leaf)
            return leaf

        handle = self.token_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.device}, dtype={self.dtype})"


class Reinitializable:
    """Mixin giving a :class:`Surrogate` ``reinitialize(seed)`` (the ``trainable`` capability's protocol).

    The family supplies :meth:`fresh_model`; the mixin draws it under a forked,
    seeded RNG (the global RNG stream is left untouched) and copies its weights
    into ``self.model`` in the model dtype.
    """

    def fresh_model(self) -> torch.nn.Module:
        """A new randomly initialised model of the same architecture, drawn from the current RNG (hook)."""
        raise NotImplementedError(f"{type(self).__name__} cannot build a fresh model")

    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        """Overwrite every weight with a fresh random initialisation of the same architecture (seeded).

        For from-scratch surrogates (min-min restarts with new inits); not for pretrained models.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            fresh = self.fresh_model()
        self.model.load_state_dict(fresh.to(dtype=self.dtype).state_dict())


class ConfigAndWeightsFolder:
    """Mixin giving a :class:`Surrogate` a ``save`` in a JSON-config + safetensors layout (open_clip, timm).

    Class attributes: ``config_name`` (the JSON file) and ``weight_names`` (weight files the
    loader accepts, preferred first: ``save`` writes the first as safetensors and deletes
    the others so no stale checkpoint stays next to it). Hook: :meth:`saved_config`.
    """

    config_name: ClassVar[str]
    weight_names: ClassVar[Tuple[str, ...]]

    def saved_config(self) -> Dict[str, Any]:
        """The JSON-able config written next to the weights (hook)."""
        raise NotImplementedError

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the config (:meth:`saved_config`) and the model's state dict (safetensors); returns ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / self.config_name).write_text(json.dumps(self.saved_config(), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / self.weight_names[0]))
        for name in self.weight_names[1:]:
            stale = path / name
            if stale.is_file():  # the loader prefers the first name, but do not leave two different checkpoints
                stale.unlink()
        return path
