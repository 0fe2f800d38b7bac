"""Shared mechanics of Hugging Face vision-language surrogates.

:class:`HFVisionLanguageSurrogate` turns (pixels, question, answer) into one
forward pass of a transformers ``*ForConditionalGeneration`` model: chat
template, tokenisation with the image placeholder expanded, label masking,
per-sample answer loss, greedy generation and LoRA adapters. A family adapter
only supplies its differentiable image processor and image-token count.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..data import VQASample
from .base import Surrogate

__all__ = ["HFVisionLanguageSurrogate", "TokenBatch", "LoraSettings"]

log = logging.getLogger(__name__)


@dataclass
class TokenBatch:
    """Token-level view of a batch (all tensors (N, L), right- or left-padded).

    Attributes:
        input_ids: token ids with image placeholders expanded.
        attention_mask: 1 for real tokens, 0 for padding.
        labels: answer (+ end-of-sequence) ids at their positions, -100 elsewhere.
        image_mask: True at image-token positions.
        answer_mask: True at answer-text positions (end-of-sequence excluded).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    image_mask: torch.Tensor
    answer_mask: torch.Tensor

    def to(self, device: torch.device) -> "TokenBatch":
        """Move every tensor to ``device``."""
        return TokenBatch(*(getattr(self, f).to(device) for f in
                            ("input_ids", "attention_mask", "labels", "image_mask", "answer_mask")))


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


class HFVisionLanguageSurrogate(Surrogate):
    """Base of transformers LVLM surrogates (loaded with ``from_pretrained`` from a local folder)."""

    capabilities = frozenset({"image_grad", "token_grad", "attentions", "trainable", "generate", "lora"})
    #: regex of the language-model projections LoRA adapts by default.
    lora_target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    #: substring naming the multimodal projector's parameters.
    projector_key = "multi_modal_projector"
    model_class: str = "AutoModelForImageTextToText"

    # ----------------------------------------------------------------- loading
    def _load(self) -> torch.nn.Module:
        import transformers
        from transformers import AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cls = getattr(transformers, self.model_class)
        model = cls.from_pretrained(self.path, local_files_only=True, dtype=self.dtype)
        self._lora_active = False
        self._encode_cache: Dict[Tuple[str, str], Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}
        self._setup(model)
        return model

    def _setup(self, model: torch.nn.Module) -> None:
        """Family hook run once after loading (read processor settings, token ids)."""

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Save model and processor with ``save_pretrained`` (a LoRA adapter is merged first)."""
        if self._lora_active:
            raise RuntimeError("detach_lora(merge=True) before saving a surrogate with an adapter")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    # ----------------------------------------------------------------- family hooks
    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Differentiable model image inputs (e.g. ``pixel_values``) from (N, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many placeholder tokens one image of this raw size expands to."""
        raise NotImplementedError

    @property
    def image_token_id(self) -> int:
        """Id of the image placeholder token."""
        return int(self.model.config.image_token_id if hasattr(self.model.config, "image_token_id")
                   else self.model.config.image_token_index)

    # ----------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """The chat-formatted prompt (with one image placeholder) ending where the answer starts."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode_text(self, question: str, answer: str, height: int, width: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        key = (question, answer, height, width)
        hit = self._encode_cache.get(key)  # type: ignore[arg-type]
        if hit is not None:
            return hit
        image_token = self.processor.image_token
        prompt = self.prompt_text(question).replace(
            image_token, image_token * self.num_image_tokens(height, width))
        prompt_ids = tuple(self.tokenizer(prompt)["input_ids"])
        answer_ids: Tuple[int, ...] = ()
        if answer:
            answer_ids = tuple(self.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])
        if len(self._encode_cache) > 100_000:
            self._encode_cache.clear()
        self._encode_cache[key] = (prompt_ids, answer_ids)  # type: ignore[index]
        return prompt_ids, answer_ids

    def encode(self, questions: Sequence[str], answers: Optional[Sequence[str]], image_hw: Tuple[int, int],
               padding_side: str = "right") -> TokenBatch:
        """Tokenise a batch; with ``answers`` None, prompts only (for generation, left padding)."""
        eos = self.tokenizer.eos_token_id
        rows = []
        for i, q in enumerate(questions):
            p, a = self._encode_text(q, answers[i] if answers is not None else "", *image_hw)
            ids = list(p) + (list(a) + [eos] if answers is not None else [])
            labels = [-100] * len(p) + (list(a) + [eos] if answers is not None else [])
            amask = [False] * len(p) + ([True] * len(a) + [False] if answers is not None else [])
            rows.append((ids, labels, amask))
        length = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id
        n = len(rows)
        input_ids = torch.full((n, length), pad, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), -100, dtype=torch.long)
        answer_mask = torch.zeros((n, length), dtype=torch.bool)
        for i, (ids, lab, am) in enumerate(rows):
            sl = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            labels[i, sl] = torch.tensor(lab)
            answer_mask[i, sl] = torch.tensor(am)
        image_mask = (input_ids == self.image_token_id) & attention.bool()
        return TokenBatch(input_ids, attention, labels, image_mask, answer_mask).to(self.device)

    # ----------------------------------------------------------------- loss / generation
    def forward(self, pixels: torch.Tensor, batch: TokenBatch, **kwargs: Any):
        """Run the model; extra kwargs (``output_attentions``, ``logits_to_keep``) pass through."""
        inputs = self.pixel_inputs(self.to_device(pixels))
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **inputs, **kwargs)

    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = self.encode([s.question for s in samples], [s.answer for s in samples], tuple(pixels.shape[-2:]))
        return self.loss_from_batch(pixels, batch)

    def loss_from_batch(self, pixels: torch.Tensor, batch: TokenBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample mean answer-token NLL (N,) and teacher-forced exact match (N,) bool."""
        targets = batch.labels[:, 1:]
        keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # positions whose next token is scored
        out = self.forward(pixels, batch, logits_to_keep=keep)
        logits = out.logits.float()  # (N, K, V)
        tgt = targets[:, keep]
        scored = tgt != -100
        nll = F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
        loss = nll.sum(dim=1) / scored.sum(dim=1).clamp(min=1)
        correct = ((logits.argmax(-1) == tgt) | ~scored).all(dim=1)
        return loss, correct

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8) -> List[str]:
        batch = self.encode(list(questions), None, tuple(pixels.shape[-2:]), padding_side="left")
        inputs = self.pixel_inputs(self.to_device(pixels))
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **inputs,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        finally:
            self.model.train(was_training)
        new = out[:, batch.input_ids.shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def text_nll(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Mean next-token NLL of each text under the language model alone (no image), shape (N,).

        exp of it is the perplexity ONION-style trigger filters compare.
        """
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True).to(self.device)
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
                tgt = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
                nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100, reduction="none")
                out.append(nll.sum(1) / (tgt != -100).sum(1).clamp(min=1))
        finally:
            self.model.train(was_training)
        return torch.cat(out).cpu()

    # ----------------------------------------------------------------- training / LoRA
    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        named = list(self.model.named_parameters())
        if mode == "full":
            return [p for n, p in named if "lora_" not in n]
        if mode == "projector":
            params = [p for n, p in named if self.projector_key in n and "lora_" not in n]
            if not params:
                raise ValueError(f"{self.family}: no parameters match projector key {self.projector_key!r}")
            return params
        if mode == "lora":
            if not self._lora_active:
                raise RuntimeError("mode 'lora' needs an adapter: call attach_lora() first")
            return [p for n, p in named if "lora_" in n]
        raise ValueError(f"mode must be 'full', 'projector' or 'lora', got {mode!r}")

    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        """Overwrite every weight with a fresh random initialisation of the same architecture (seeded).

        For from-scratch surrogates (min-min restarts with new inits); not for pretrained models.
        """
        if self._lora_active:
            raise RuntimeError("detach the LoRA adapter before reinitialising")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            fresh = type(self.model)(self.model.config)
        self.model.load_state_dict(fresh.to(dtype=self.dtype).state_dict())

    def attach_lora(self, settings: LoraSettings = LoraSettings()) -> None:
        """Wrap the model with a fresh peft LoRA adapter (base weights untouched)."""
        from peft import LoraConfig, get_peft_model

        if self._lora_active:
            raise RuntimeError("a LoRA adapter is already attached")
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=settings.target or self.lora_target, bias="none")
        self.model = get_peft_model(self.model, config)
        self._lora_active = True

    def detach_lora(self, merge: bool = False) -> None:
        """Remove the adapter; ``merge=True`` folds it into the base weights first."""
        if not self._lora_active:
            raise RuntimeError("no LoRA adapter is attached")
        self.model = self.model.merge_and_unload() if merge else self.model.unload()
        self._lora_active = False

    @property
    def lora_active(self) -> bool:
        """Whether a LoRA adapter is attached."""
        return self._lora_active
