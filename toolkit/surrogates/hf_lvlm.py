"""Shared mechanics of Hugging Face vision-language surrogates.

:class:`HFVisionLanguageSurrogate` turns (pixels, question, answer) into one
forward pass of a transformers ``*ForConditionalGeneration`` model: chat
template, tokenisation with the image placeholder expanded, label masking,
per-sample answer loss, greedy generation and LoRA adapters. A family adapter
only supplies its differentiable image processor and image-token count.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..data import VQASample
from .base import LoraSettings, Reinitializable, Surrogate

__all__ = ["HFVisionLanguageSurrogate", "TokenBatch", "LoraSettings", "ForwardResult", "check_prompt_template",
           "strip_template_bos"]

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
        trigger_mask: True at tokens overlapping a marked span of the question (an inserted trigger).
        extras: family-specific model inputs derived from the tokens (e.g. ``mm_token_type_ids``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    image_mask: torch.Tensor
    answer_mask: torch.Tensor
    trigger_mask: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> "TokenBatch":
        """Move every tensor to ``device``."""
        moved = [getattr(self, f).to(device) for f in ("input_ids", "attention_mask", "labels", "image_mask",
                                                       "answer_mask")]
        trig = self.trigger_mask.to(device) if self.trigger_mask is not None else None
        return TokenBatch(*moved, trig, {k: v.to(device) for k, v in self.extras.items()})


@dataclass
class ForwardResult:
    """What :meth:`HFVisionLanguageSurrogate.run` returns.

    Attributes:
        loss: per-sample mean answer NLL (N,) over the answer's tokens and the end-of-sequence token that
            closes it, differentiable (the training objective).
        answer_nll: per-sample SUM of the NLL over the answer's own tokens (end-of-sequence excluded) (N,),
            differentiable: MMGuard's l_train as the paper's Eq. 12 writes it.
        correct: teacher-forced exact match (N,) bool.
        attentions: attention probabilities of the first K language-model layers,
            each (N, heads, L, L) (query, key); empty unless requested.
        embeddings: the input embeddings (N, L, D) as a leaf whose ``.grad`` is
            filled by a backward pass (HotFlip); None unless requested.
        batch: the token batch used.
        embedding_offset: first sequence position ``embeddings`` covers (0; P when a shared prefix of P tokens
            ran once per image through the KV cache, so ``embeddings`` is (N, L - P, D) and a mask over the
            whole sequence is sliced ``mask[:, embedding_offset:]``).
    """

    loss: torch.Tensor
    correct: torch.Tensor
    attentions: Tuple[torch.Tensor, ...]
    embeddings: Optional[torch.Tensor]
    batch: "TokenBatch"
    answer_nll: Optional[torch.Tensor] = None
    embedding_offset: int = 0


def check_prompt_template(template: str) -> None:
    """A prompt template holds ``{image}`` and ``{question}`` exactly once each (and no other fields)."""
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if sorted(fields) != ["image", "question"]:
        raise ValueError(f"prompt template must contain {{image}} and {{question}} once each and no other "
                         f"{{...}} fields, got {template!r}")


def strip_template_bos(tokenizer: Any, text: str) -> str:
    """Drop a leading BOS written by a chat template when ``tokenizer`` adds BOS itself.

    Real Gemma 3 and Llama 3 templates start with ``bos_token`` and their
    tokenizers prepend it too; the documented pipelines tokenise the templated
    text without special tokens. Keeping exactly one BOS here lets the base
    class tokenise with special tokens as for every other family.
    """
    bos = tokenizer.bos_token
    if not bos or not text.startswith(bos) or tokenizer.bos_token_id is None:
        return text
    adds_bos = tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos else text


class HFVisionLanguageSurrogate(Reinitializable, Surrogate):
    """Base of transformers LVLM surrogates (loaded with ``from_pretrained`` from a local folder)."""

    capabilities = frozenset({"image_grad", "text", "token_grad", "attentions", "image_attention", "trainable",
                              "generate", "lora"})
    #: regex of the language-model projections LoRA adapts by default.
    lora_target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    #: substring naming the multimodal projector's parameters.
    projector_key = "multi_modal_projector"
    model_class: str = "AutoModelForImageTextToText"
    #: rows that share an image may run their common token prefix (chat-template start and image tokens) once per
    #: image and continue from its KV cache (:meth:`run_shared`): true where the image precedes the question
    #: and every position attends only to the positions before it with 1-D positions; families with
    #: bidirectional prefixes, cross-attention or multimodal rotary positions set it False (plain forward).
    prefix_cache: bool = True
    #: the family's documented single-turn prompt, used when a checkpoint ships no chat template:
    #: ``{image}`` = the processor's image placeholder, ``{question}`` = the question (None: no default)
    default_prompt_template: Optional[str] = None

    def __init__(self, path: Union[str, os.PathLike], *, prompt_template: Optional[str] = None,
                 **kwargs: Any) -> None:
        """``prompt_template``: override the prompt format (``{image}`` and ``{question}`` once each), e.g. for a
        checkpoint without a chat template; other arguments as :class:`~toolkit.surrogates.base.Surrogate`."""
        if prompt_template is not None:
            check_prompt_template(prompt_template)
        self.prompt_template = prompt_template
        super().__init__(path, **kwargs)

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
        model = self.load_model(getattr(transformers, self.model_class))
        if self.gradient_checkpointing and "attentions" in self.capabilities:
            # a checkpointed layer is recomputed during backward, after run() has switched eager attention off
            # again, and a recompute with another kernel does not match the forward: stay eager throughout
            model.set_attn_implementation("eager")
        self._lora_active = False
        self._encode_cache: Dict[tuple, tuple] = {}
        self._setup(model)
        return model

    def checkpoint_frozen(self) -> None:
        """transformers checkpoints a layer only while that layer is in train mode: flag the checkpointed decoder
        layers alone as training (their attention, MLP and dropout submodules stay in eval mode, so nothing
        random happens), so input-gradient steps recompute activations instead of storing them. The next
        ``model.train(...)`` (leaving :meth:`frozen`) resets the flags."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        for module in self.model.modules():
            if isinstance(module, GradientCheckpointingLayer) and getattr(module, "gradient_checkpointing", False):
                module.training = True

    def load_model(self, model_class: type) -> torch.nn.Module:
        """The transformers model of ``self.path`` (``model_class.from_pretrained``, local files only, in the
        surrogate's dtype). A subclass may build it another way, e.g. with random weights from the folder's
        config for a memory and speed check at a real model's size (``benchmarks/gpu_check.py``)."""
        return model_class.from_pretrained(self.path, local_files_only=True, dtype=self.dtype)

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
        """Differentiable model image inputs (e.g. ``pixel_values``) from (N, 3, H, W) in [0, 1].

        Default: ``{"pixel_values": (N, 3, h, w)}``, the family's fixed-size ``image_processor``
        output in the model dtype (:meth:`Surrogate.pixel_inputs`).
        """
        return {"pixel_values": super().pixel_inputs(pixels)}

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many image tokens one raw image of this size becomes in the sequence."""
        raise NotImplementedError

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """Raw-image region each image token sees, in sequence order: float (T, 4) rows
        (y0, x0, y1, x1), half-open, in raw pixel units; T = :meth:`num_image_tokens`."""
        raise NotImplementedError

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """Replace the single image placeholder by the family's full image-token text.

        Default: ``image_token`` repeated :meth:`num_image_tokens` times (LLaVA style).
        Must give the same ids as the real processor (checked by the contract tests).
        """
        token = self.processor.image_token
        return prompt.replace(token, token * self.num_image_tokens(height, width), 1)

    def batch_extras(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Family-specific model inputs derived from the tokens (default: none)."""
        return {}

    def reference_inputs(self, images: Sequence[Any]) -> Dict[str, torch.Tensor]:
        """The real processor's image inputs for uint8 (H, W, 3) images (for equivalence checks)."""
        return dict(self.processor.image_processor(images=list(images), return_tensors="pt"))

    def reference_input_ids(self, prompt: str, image: Any) -> torch.Tensor:
        """The real processor's ``input_ids`` (1, L) for a prompt with one placeholder and one image."""
        return self.processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"]

    @property
    def image_token_id(self) -> int:
        """Id of the image placeholder token."""
        return int(self.model.config.image_token_id if hasattr(self.model.config, "image_token_id")
                   else self.model.config.image_token_index)

    # ----------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """The prompt (with one image placeholder) ending where the answer starts: the user's
        ``prompt_template``, else the checkpoint's chat template, else the family's documented format."""
        template = self.prompt_template or self._fallback_template()
        if template is not None:
            return template.format(image=self.processor.image_token, question=question)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _fallback_template(self) -> Optional[str]:
        """None when the checkpoint has a chat template; else the family's default (said once in the log)."""
        if getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None):
            return None
        if self.default_prompt_template is None:
            raise ValueError(f"{self.path} has no chat template and family {self.family!r} has no documented "
                             "default prompt; give one with --prompt-template (spec: models.NAME.prompt_template), "
                             "e.g. 'USER: {image}\\n{question} ASSISTANT:'")
        if not getattr(self, "_fallback_said", False):
            log.warning("%s has no chat template; using the %s prompt format %r (override with --prompt-template)",
                        self.path, self.family, self.default_prompt_template)
            self._fallback_said = True
        return self.default_prompt_template

    def answer_text(self, answer: str) -> str:
        """Text of the answer as appended after the prompt (a leading space by default)."""
        return " " + answer.strip()

    def _encode_text(self, question: str, answer: str, height: int, width: int,
                     span: Optional[Tuple[int, int]] = None) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
        """(prompt ids, answer ids, prompt positions inside ``span`` of the question); the tokenisation of each
        prompt (with its offsets) and of each answer is cached, so marking another span of the same question
        (a trigger search checks every word of every candidate) tokenises nothing."""
        prompt_ids = self._cached(("prompt", question, height, width), lambda: tuple(
            self.tokenizer(self.expand_prompt(self.prompt_text(question), height, width))["input_ids"]))
        marked: Tuple[int, ...] = ()
        if span is not None:
            offsets, question_at = self._prompt_offsets(question, height, width)
            start, end = int(span[0]), int(span[1])
            if not 0 <= start < end <= len(question):
                raise ValueError(f"trigger span {span} outside the question (length {len(question)})")
            if question_at < 0:
                raise ValueError("the chat template changed the question text; cannot locate the trigger span")
            lo, hi = question_at + start, question_at + end
            marked = tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo)
        answer_ids: Tuple[int, ...] = ()
        if answer:
            answer_ids = self._cached(("answer", answer), lambda: tuple(
                self.tokenizer(self.answer_text(answer), add_special_tokens=False)["input_ids"]))
        return prompt_ids, answer_ids, marked

    def _prompt_offsets(self, question: str, height: int, width: int) -> Tuple[Tuple[Tuple[int, int], ...], int]:
        """(character offsets of the prompt's tokens, where the question starts in the prompt or -1), cached."""
        def tokenise():
            prompt = self.expand_prompt(self.prompt_text(question), height, width)
            enc = self.tokenizer(prompt, return_offsets_mapping=True)
            return tuple(map(tuple, enc["offset_mapping"])), prompt.rfind(question)
        return self._cached(("offsets", question, height, width), tokenise)

    def _cached(self, key: tuple, make):
        """``make()`` memoised in a bounded per-surrogate cache (cleared when it reaches 100,000 entries)."""
        hit = self._encode_cache.get(key)
        if hit is None:
            if len(self._encode_cache) > 100_000:
                self._encode_cache.clear()
            hit = self._encode_cache[key] = make()
        return hit

    def encode(self, questions: Sequence[str], answers: Optional[Sequence[str]], image_hw: Tuple[int, int],
               padding_side: str = "right",
               trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None) -> TokenBatch:
        """Tokenise a batch; with ``answers`` None, prompts only (for generation, left padding).

        ``trigger_spans[i]`` = (start, end) character span of question i to mark in
        ``trigger_mask`` (e.g. an inserted trigger), or None.
        """
        eos = self.tokenizer.eos_token_id
        seqs, n_prompt, n_answer, marked_at = [], [], [], []
        for i, q in enumerate(questions):
            span = trigger_spans[i] if trigger_spans is not None else None
            p, a, marked = self._encode_text(q, answers[i] if answers is not None else "", *image_hw, span)
            seqs.append(p + a + (eos,) if answers is not None else p)
            n_prompt.append(len(p))
            n_answer.append(len(a) if answers is not None else 0)
            marked_at.append(marked)
        n = len(seqs)
        lengths = torch.tensor([len(t) for t in seqs])
        length = int(lengths.max())
        start = length - lengths if padding_side == "left" else torch.zeros_like(lengths)
        pos = torch.arange(length).expand(n, length)
        real = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])
        input_ids = torch.full((n, length), self.tokenizer.pad_token_id, dtype=torch.long)
        input_ids[real] = torch.tensor([t for seq in seqs for t in seq], dtype=torch.long)
        answer_from = (start + torch.tensor(n_prompt))[:, None]
        labels = input_ids.masked_fill(~(real & (pos >= answer_from)), -100)
        answer_mask = (pos >= answer_from) & (pos < answer_from + torch.tensor(n_answer)[:, None])
        trigger_mask = None
        if trigger_spans is not None:
            trigger_mask = torch.zeros((n, length), dtype=torch.bool)
            rows = [r for r, m in enumerate(marked_at) for _ in m]
            if rows:
                cols = torch.tensor([k for m in marked_at for k in m]) + start[torch.tensor(rows)]
                trigger_mask[torch.tensor(rows), cols] = True
        attention = real.long()
        image_mask = (input_ids == self.image_token_id) & real
        batch = TokenBatch(input_ids, attention, labels, image_mask, answer_mask, trigger_mask,
                           self.batch_extras(input_ids, attention))
        return batch.to(self.device)

    # ----------------------------------------------------------------- loss / generation
    def forward(self, pixels: torch.Tensor, batch: TokenBatch, **kwargs: Any):
        """Run the model; extra kwargs (``output_attentions``, ``logits_to_keep``) pass through."""
        inputs = self.pixel_inputs(self.to_device(pixels))
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.extras,
                          **inputs, **kwargs)

    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample mean answer-token NLL (N,) and teacher-forced exact match (N,) bool of (N, 3, H, W) pixels."""
        batch = self.encode([s.question for s in samples], [s.answer for s in samples], tuple(pixels.shape[-2:]))
        return self.loss_from_batch(pixels, batch)

    def forward_samples(self, pixels: torch.Tensor, samples: Sequence[VQASample],
                        trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None, *,
                        attention_layers: int = 0, embedding_grad: bool = False,
                        image_index: Optional[torch.Tensor] = None) -> ForwardResult:
        """Encode ``samples`` (marking ``trigger_spans`` of their questions) and :meth:`run` them.

        ``image_index`` (N,) long: ``pixels`` holds M distinct images and sample n uses ``pixels[image_index[n]]``
        (e.g. many candidate questions of one image); the rows then share their common prefix through
        :meth:`run_shared`. None: one image per sample.
        """
        batch = self.encode([s.question for s in samples], [s.answer for s in samples], tuple(pixels.shape[-2:]),
                            trigger_spans=trigger_spans)
        if image_index is not None:
            return self.run_shared(pixels, image_index, batch, attention_layers=attention_layers,
                                   embedding_grad=embedding_grad)
        return self.run(pixels, batch, attention_layers=attention_layers, embedding_grad=embedding_grad)

    def loss_from_batch(self, pixels: torch.Tensor, batch: TokenBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample mean answer-token NLL (N,) and teacher-forced exact match (N,) bool."""
        result = self.run(pixels, batch)
        return result.loss, result.correct

    def run(self, pixels: torch.Tensor, batch: TokenBatch, *, attention_layers: int = 0,
            embedding_grad: bool = False) -> ForwardResult:
        """One forward pass with optional attentions and input-embedding capture.

        Args:
            pixels: (N, 3, H, W) in [0, 1] (gradients flow back to them).
            batch: from :meth:`encode` with answers.
            attention_layers: K > 0 returns the attention probabilities of the
                first K language-model layers (eager attention is switched on for
                this call only).
            embedding_grad: capture the input embeddings as a leaf requiring grad
                (``result.embeddings.grad`` after backward; gradient w.r.t. every
                token's embedding, image positions included).
        """
        keep = self._scored_positions(batch)
        captured: List[torch.Tensor] = []
        maps: List[torch.Tensor] = []
        with contextlib.ExitStack() as stack:
            self._eager(stack, attention_layers)
            kwargs = self._capture(stack, attention_layers, embedding_grad, maps, captured)
            out = self.forward(pixels, batch, logits_to_keep=keep, **kwargs)
        attentions = self._attention_maps(out, maps, attention_layers)
        return self._result(out.logits, batch, keep, attentions, attention_layers, captured)

    def run_shared(self, images: torch.Tensor, image_index: torch.Tensor, batch: TokenBatch, *,
                   attention_layers: int = 0, embedding_grad: bool = False) -> ForwardResult:
        """:meth:`run` for rows that share images: row n of ``batch`` sees ``images[image_index[n]]``.

        Where the family allows it (:attr:`prefix_cache`), a token prefix of P positions runs once per distinct
        image and its KV cache is repeated over that image's rows; only positions P..L run per row. P is the
        longest prefix that every row shares with the other rows of its image (same ids, no padding, same
        family extras; for a trigger search's candidates: the template, the image and the question up to the
        slot being searched), holds every image token and ends before the first scored position; with
        ``embedding_grad`` it is the prefix common to all rows, so the captured embeddings of each row cover
        everything after it. The result is :meth:`run`'s on ``images[image_index]``: the same losses and
        answer NLL, the same attention maps (prefix query rows come from the prefix pass; attention is causal,
        so they put nothing on later keys), and the same embedding gradients on positions P..
        (``embeddings`` covers those, ``result.embedding_offset`` = P); gradients reach ``images`` and any
        trainable parameter through the cache. Falls back to :meth:`run` when no such prefix exists.

        Args:
            images: (M, 3, H, W) in [0, 1]; image_index: (N,) long into ``images``; batch: N rows, right-padded.
        """
        index = torch.as_tensor(image_index, dtype=torch.long)
        if index.dim() != 1 or len(index) != batch.input_ids.shape[0]:
            raise ValueError(f"image_index must be (N,) with N = {batch.input_ids.shape[0]} rows, got "
                             f"{tuple(index.shape)}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= images.shape[0]):
            raise ValueError(f"image_index out of range for {images.shape[0]} images")
        used, local = torch.unique(index, return_inverse=True)
        groups = torch.zeros_like(local) if embedding_grad else local
        # checkpointed layers drop the KV cache while gradients are recorded: no shared prefix then
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        start = self.shared_prefix_length(batch, groups) if self.prefix_cache and not checkpointing else 0
        if not start:
            return self.run(images[index], batch, attention_layers=attention_layers, embedding_grad=embedding_grad)
        n, length = batch.input_ids.shape
        keep = self._scored_positions(batch)
        captured: List[torch.Tensor] = []
        maps: List[torch.Tensor] = []
        prefix_maps: List[torch.Tensor] = []
        first = self._first_rows(local, len(used)).to(self.device)
        with contextlib.ExitStack() as stack:
            self._eager(stack, attention_layers)  # the prefix runs with the suffix's attention kernel
            with contextlib.ExitStack() as inner:
                prefix_kwargs = self._capture(inner, attention_layers, False, prefix_maps, [])
                prefix = self.model(input_ids=batch.input_ids[first, :start],
                                    attention_mask=batch.attention_mask[first, :start],
                                    **{k: v[first.to(v.device), :start] for k, v in batch.extras.items()},
                                    **self.pixel_inputs(self.to_device(images[used])), use_cache=True,
                                    logits_to_keep=1, **prefix_kwargs)
            cache = prefix.cache
            cache.batch_select_indices(local.to(self.device))
            kwargs = self._capture(stack, attention_layers, embedding_grad, maps, captured)  # the suffix's alone
            out = self.model(input_ids=batch.input_ids[:, start:], attention_mask=batch.attention_mask,
                             **{k: v[:, start:] for k, v in batch.extras.items()}, cache=cache,
                             use_cache=True, logits_to_keep=keep - start, **kwargs)
        attentions: Tuple[torch.Tensor, ...] = ()
        if attention_layers:  # prefix rows (M, heads, P, P) repeated and padded to L keys, over the suffix rows
            rows = local.to(self.device)
            attentions = tuple(torch.cat([F.pad(p[rows], (0, length - start)), a], dim=2) for p, a in zip(
                self._attention_maps(prefix, prefix_maps, attention_layers),
                self._attention_maps(out, maps, attention_layers)))
        return self._result(out.logits, batch, keep, attentions, attention_layers, captured, offset=start)

    def shared_prefix_length(self, batch: TokenBatch, groups: Optional[torch.Tensor] = None) -> int:
        """Length P of the token prefix :meth:`run_shared` runs once per group (0 = none): every row equals its
        group's first row there (same ids, no padding, same family extras), it holds every image token and it
        ends before the first position whose next token is scored. ``groups`` (N,) long in 0..G-1 (rows that
        share an image); None = one group (the prefix common to all rows)."""
        ids, valid = batch.input_ids, batch.attention_mask.bool()
        if any(v.dim() != 2 or v.shape != ids.shape for v in batch.extras.values()):
            return 0
        groups = torch.zeros(len(ids), dtype=torch.long) if groups is None else groups
        ref = self._first_rows(groups, int(groups.max()) + 1)[groups].to(ids.device)
        same = valid & (ids == ids[ref])
        for v in batch.extras.values():
            same &= v == v[ref]
        scored = self._scored_positions(batch)
        if not len(scored):
            return 0
        differs = (~same.all(0)).nonzero()
        start = min(int(differs[0]) if len(differs) else ids.shape[1], int(scored[0]))
        images = batch.image_mask.any(0).nonzero()
        if not len(images) or start <= int(images[-1]):
            return 0
        return start

    @staticmethod
    def _first_rows(groups: torch.Tensor, count: int) -> torch.Tensor:
        """Index of each group's first row (count,) for ``groups`` (N,) in 0..count-1."""
        n = len(groups)
        return torch.full((count,), n, dtype=torch.long).scatter_reduce_(0, groups.cpu(), torch.arange(n), "amin")

    @staticmethod
    def _scored_positions(batch: TokenBatch) -> torch.Tensor:
        """Positions whose next token is scored (the logits :meth:`run` keeps)."""
        return (batch.labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)

    def _eager(self, stack: contextlib.ExitStack, attention_layers: int) -> None:
        """Switch to eager attention on ``stack`` when attention maps are asked for."""
        if attention_layers:
            self.require("attentions", who="attention_layers")
            stack.enter_context(self._eager_attention())

    def _capture(self, stack: contextlib.ExitStack, attention_layers: int, embedding_grad: bool,
                 maps: List[torch.Tensor], captured: List[torch.Tensor]) -> Dict[str, Any]:
        """Hook the first ``attention_layers`` self-attention modules (their maps land in ``maps``, the deeper
        layers' maps are freed as they go) and the input embeddings (into ``captured``) on ``stack``; the model
        kwargs still needed (``output_attentions`` only when the family's modules cannot be found)."""
        if embedding_grad:
            stack.enter_context(self._capture_embeddings(captured))
        if not attention_layers:
            return {}
        modules = self.attention_modules()
        if len(modules) < attention_layers:  # unknown layout: every layer's maps through the model output
            return {"output_attentions": True}
        for module in modules[:attention_layers]:
            handle = module.register_forward_hook(lambda _m, _args, out: maps.append(out[1]))
            stack.callback(handle.remove)
        return {}

    def attention_modules(self) -> List[torch.nn.Module]:
        """The language model's self-attention modules in layer order (``...layers.N.self_attn`` under its
        language or text model; cross-attention layers are not among them). :meth:`run` hooks the first K of
        them, so a deep model keeps K attention maps, not one per layer. Found once per model object."""
        model = self.base_model()
        cached = self.__dict__.get("_attention_modules")
        if cached is None or cached[0] is not model:
            found = []
            for name, module in model.named_modules():
                hit = self._SELF_ATTENTION.search(name)
                if hit:
                    found.append((int(hit.group(1)), module))
            cached = self._attention_modules = (model, [m for _, m in sorted(found, key=lambda t: t[0])])
        return cached[1]

    _SELF_ATTENTION = re.compile(r"(?:language_model|text_model)\.(?:model\.)?layers\.(\d+)\.self_attn$")

    def _attention_maps(self, output: Any, maps: List[torch.Tensor], attention_layers: int
                        ) -> Tuple[torch.Tensor, ...]:
        """The first ``attention_layers`` maps: hooked, or from the output where no module was hooked."""
        if not attention_layers:
            return ()
        return tuple(maps[:attention_layers]) if maps else self.select_attentions(output)[:attention_layers]

    def _result(self, logits: torch.Tensor, batch: TokenBatch, keep: torch.Tensor,
                attentions: Tuple[torch.Tensor, ...], attention_layers: int, captured: List[torch.Tensor],
                offset: int = 0) -> ForwardResult:
        """Losses and exact match from the kept logits (N, K, V) (shared by :meth:`run` and :meth:`run_shared`)."""
        logits = logits.float()
        tgt = batch.labels[:, 1:][:, keep]
        scored = tgt != -100
        nll = F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
        loss = nll.sum(dim=1) / scored.sum(dim=1).clamp(min=1)
        answer_nll = (nll * (scored & (tgt != self.tokenizer.eos_token_id))).sum(dim=1)  # encode() appends EOS
        correct = ((logits.argmax(-1) == tgt) | ~scored).all(dim=1)
        if len(attentions) < attention_layers:
            raise ValueError(f"{self.family}: asked for {attention_layers} attention layers, the language "
                             f"model has {len(attentions)}")
        return ForwardResult(loss, correct, attentions, captured[0] if captured else None, batch, answer_nll,
                             embedding_offset=offset)

    def select_attentions(self, output: Any) -> Tuple[torch.Tensor, ...]:
        """Language-model self-attention maps from a model output (family hook; default ``output.attentions``)."""
        return tuple(a for a in (output.attentions or ()) if a is not None)

    @contextlib.contextmanager
    def _eager_attention(self) -> Iterator[None]:
        """Switch the model to eager attention (weights are returned) and back.

        transformers' ``set_attn_implementation`` walks every module, which a trigger search calling this per
        forward pays hundreds of times; the first switch of a model records which configs it changed and
        later switches set exactly those (:meth:`_attention_switch`)."""
        model = self.base_model()
        old = model.config._attn_implementation
        if old == "eager":
            yield
            return
        changes = self._attention_switch(model, old)
        for config, _, new in changes:  # the attribute set_attn_implementation itself writes (no recursion)
            config._attn_implementation_internal = new
        try:
            yield
        finally:
            for config, previous, _ in changes:
                config._attn_implementation_internal = previous

    def _attention_switch(self, model: torch.nn.Module, old: str) -> List[Tuple[Any, str, str]]:
        """(config, implementation before, eager setting) of every config ``set_attn_implementation("eager")``
        changes on ``model`` (found once per model and starting implementation, then cached)."""
        from transformers import PreTrainedModel

        cache = self.__dict__.setdefault("_attention_switches", {})
        key = (id(model), old)
        if key not in cache:
            configs: Dict[int, Any] = {}
            todo = [model.config] + [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
            while todo:
                config = todo.pop()
                if id(config) not in configs:
                    configs[id(config)] = config
                    todo += [getattr(config, k) for k in getattr(config, "sub_configs", {}) if getattr(config, k, None)]
            before = {i: c._attn_implementation for i, c in configs.items()}
            model.set_attn_implementation("eager")
            after = {i: c._attn_implementation for i, c in configs.items()}
            model.set_attn_implementation(old)
            cache[key] = [(configs[i], before[i], after[i]) for i in configs if before[i] != after[i]]
        return cache[key]

    def token_embeddings(self) -> torch.nn.Module:
        """The language model's input-embedding module (captured for HotFlip by ``run(embedding_grad=True)``)."""
        return self.model.get_input_embeddings()

    def base_model(self) -> torch.nn.Module:
        """The transformers model under any peft wrapper."""
        return self.model.get_base_model() if self._lora_active else self.model

    def trigger_token_mask(self, image_hw: Tuple[int, int], samples: Sequence[VQASample],
                           spans: Sequence[Optional[Tuple[int, int]]]) -> torch.Tensor:
        """(N, L) mask of the tokens overlapping ``spans`` of the questions, aligned with :meth:`encode`."""
        batch = self.encode([s.question for s in samples], [s.answer for s in samples], image_hw,
                            trigger_spans=spans)
        return batch.trigger_mask

    def trigger_vocabulary(self):
        """Admissible trigger tokens of this tokenizer minus the chat template's own words
        (:class:`toolkit.triggers.Vocabulary`, cached)."""
        if getattr(self, "_trigger_vocab", None) is None:
            from ..triggers import admissible_vocabulary, words_of

            template = self.prompt_text("") + self.answer_text("")
            self._trigger_vocab = admissible_vocabulary(self.tokenizer).without(words_of(template))
        return self._trigger_vocab

    def embedding_matrix(self) -> torch.Tensor:
        """Token-embedding weights (V, D) of the language model (for HotFlip scores)."""
        return self.token_embeddings().weight

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8) -> List[str]:
        """Greedy answers (decoded, stripped) for (N, 3, H, W) pixels in [0, 1] and N questions."""
        batch = self.encode(list(questions), None, tuple(pixels.shape[-2:]), padding_side="left")
        inputs = self.pixel_inputs(self.to_device(pixels))
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.extras, **inputs,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        finally:
            self.model.train(was_training)
        new = out[:, batch.input_ids.shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def text_inputs(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Model inputs that score ``texts`` with the language model alone (hook of :meth:`text_nll`).

        Default: the tokenizer's ``input_ids`` and ``attention_mask`` (N, L), padded, on the device.
        """
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True).to(self.device)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def text_nll(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Mean next-token NLL of each text under the language model alone (no image), shape (N,).

        exp of it is the perplexity ONION-style trigger filters compare. The inputs of
        each batch come from :meth:`text_inputs`.
        """
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), batch_size):
                enc = self.text_inputs(list(texts[start:start + batch_size]))
                logits = self.model(**enc).logits.float()
                tgt = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
                nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100, reduction="none")
                out.append(nll.sum(1) / (tgt != -100).sum(1).clamp(min=1))
        finally:
            self.model.train(was_training)
        return torch.cat(out).cpu()

    # ----------------------------------------------------------------- training / LoRA
    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        """``"full"``: every base weight; ``"projector"``: parameters matching :attr:`projector_key`;
        ``"lora"``: the attached adapter's weights."""
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

    def fresh_model(self) -> torch.nn.Module:
        """A randomly initialised model of the loaded class and config (hook of ``reinitialize``);
        RuntimeError while a LoRA adapter is attached."""
        if self._lora_active:
            raise RuntimeError("detach the LoRA adapter before reinitialising")
        return type(self.model)(self.model.config)

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
