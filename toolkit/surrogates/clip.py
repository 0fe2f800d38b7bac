"""open_clip CLIP surrogate: image-text contrastive models behind the :class:`Surrogate` interface.

Multimodal unlearnable examples (MEM; Liu et al. 2024, "Multimodal Unlearnable
Examples: Protecting Data against Multimodal Contrastive Learning") protect
image-caption pairs against CLIP-style training by minimising the contrastive
(InfoNCE) loss of the pairs with image perturbations and text triggers. This
adapter exposes an open_clip model with that loss:

* caption of a sample = :meth:`ClipSurrogate.caption` = ``f"{question} {answer}"``
  (override or wrap it to insert a text trigger);
* per-sample symmetric InfoNCE within the batch (image -> captions and
  caption -> images, temperature = the model's learned ``logit_scale``);
* ``correct`` = the image's top-1 caption in the batch is its own.

Loading is offline: a folder in open_clip's Hugging Face layout
(``open_clip_config.json`` = ``{"model_cfg": ..., "preprocess_cfg": ...}`` and
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``); text is
tokenised with open_clip's bundled ``SimpleTokenizer`` (CLIP BPE, 49408 tokens).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..data import VQASample
from .base import ConfigAndWeightsFolder, Reinitializable, Surrogate
from .processing import DifferentiableEvalTransform
from .registry import SURROGATES

__all__ = ["ClipSurrogate", "ClipForward", "CONFIG_NAME", "WEIGHT_NAMES", "build_open_clip_model"]

#: config file of the open_clip Hugging Face layout
CONFIG_NAME = "open_clip_config.json"
#: weight files, in order of preference (the first is what :meth:`ClipSurrogate.save` writes)
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class ClipForward:
    """What :meth:`ClipSurrogate.run` returns (N = batch size, L = context length, D = text width).

    Attributes:
        loss: per-sample symmetric InfoNCE (N,), differentiable (nats).
        correct: the image's top-1 caption is its own (N,) bool.
        logits: image -> caption logits (N, N) (``logit_scale.exp()`` times cosine similarity).
        tokens: caption token ids (N, L).
        embeddings: caption token embeddings (N, L, D) as a leaf whose ``.grad`` is
            filled by a backward pass (HotFlip-style trigger search); None unless requested.
        trigger_mask: (N, L) bool, True at the caption tokens of the marked question
            spans (see :meth:`ClipSurrogate.forward_samples`); None unless spans were given.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    logits: torch.Tensor
    tokens: torch.Tensor
    embeddings: Optional[torch.Tensor]
    trigger_mask: Optional[torch.Tensor] = None


@functools.lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int, kwargs_json: str):
    """open_clip's ``SimpleTokenizer`` (bundled BPE vocabulary, offline), cached per settings."""
    from open_clip import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length, **json.loads(kwargs_json))


def build_open_clip_model(model_cfg: Dict[str, Any]) -> torch.nn.Module:
    """Instantiate the open_clip model a ``model_cfg`` describes (random init, fp32, CPU).

    ``CLIP`` by default, ``CustomTextCLIP`` for ``custom_text``, ``CoCa`` with a
    ``multimodal_cfg`` (the class choice of ``open_clip.create_model``). Towers
    that need downloaded weights (a Hugging Face text model) raise ``ValueError``.
    """
    import open_clip

    cfg = copy.deepcopy(dict(model_cfg))
    text_cfg = cfg.get("text_cfg", {}) or {}
    if "hf_model_name" in text_cfg:
        raise ValueError(f"text tower {text_cfg['hf_model_name']!r} is a Hugging Face model; only open_clip's "
                         "own text transformer is supported offline")
    vision_cfg = cfg.get("vision_cfg", {}) or {}
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    custom_text = bool(cfg.pop("custom_text", False))
    if "multimodal_cfg" in cfg:
        cls = open_clip.CoCa
    else:
        cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


@SURROGATES.register("open_clip")
class ClipSurrogate(ConfigAndWeightsFolder, Reinitializable, Surrogate):
    """An open_clip CLIP model (contrastive image-text) from a local folder.

    Args: see :class:`Surrogate` (``gradient_checkpointing`` uses open_clip's ``set_grad_checkpointing``).

    Image input: any size (N, 3, H, W) in [0, 1]; resized (shortest side to the
    model's ``image_size``), center-cropped and normalised with the folder's
    ``preprocess_cfg`` mean/std, differentiably, as ``open_clip.image_transform(...,
    is_train=False)`` does on a PIL image (within one uint8 level).

    Loss: per-sample symmetric InfoNCE over the batch's captions (see the module
    docstring and :meth:`run`). It compares samples with each other, so a batch
    needs at least two distinct captions for a non-zero loss; samples sharing a
    caption text are all positives of each other.

    There is no free-form generation: :meth:`answer` ranks given candidate
    answers (zero-shot classification), so ``"generate"`` is not a capability;
    ``"lora"`` is not supported either.
    """

    family = "open_clip"
    capabilities = frozenset({"image_grad", "text", "token_grad", "trainable"})
    contrastive = True
    config_name = CONFIG_NAME
    weight_names = WEIGHT_NAMES

    # ----------------------------------------------------------------- loading
    def _load(self) -> torch.nn.Module:
        import open_clip
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        config_file = self.path / CONFIG_NAME
        try:
            config = json.loads(config_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no {CONFIG_NAME} (not an open_clip folder)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
        if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
            raise ValueError(f"{config_file}: needs a 'model_cfg' object")
        text_cfg = config["model_cfg"].get("text_cfg", {}) or {}
        if text_cfg.get("hf_tokenizer_name"):
            raise ValueError(f"{config_file}: text_cfg.hf_tokenizer_name={text_cfg['hf_tokenizer_name']!r}; only "
                             "open_clip's built-in SimpleTokenizer is supported")
        weights = next((self.path / n for n in WEIGHT_NAMES if (self.path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{self.path}: no weights (expected one of {', '.join(WEIGHT_NAMES)})")
        self.config = config
        model = build_open_clip_model(config["model_cfg"])
        open_clip.load_checkpoint(model, str(weights), strict=True)
        preprocess = merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {}) or {})
        vision_size = (config["model_cfg"].get("vision_cfg", {}) or {}).get("image_size", preprocess["size"])
        preprocess["size"] = getattr(model.visual, "image_size", vision_size)  # what open_clip.create_model does
        open_clip.set_model_preprocess_cfg(model, preprocess)
        self.preprocess_cfg = preprocess
        self.image_processor = DifferentiableEvalTransform.from_open_clip(preprocess)
        self.context_length = int(text_cfg.get("context_length", 77))
        self.tokenizer = _simple_tokenizer(self.context_length,
                                           json.dumps(text_cfg.get("tokenizer_kwargs", {}) or {}, sort_keys=True))
        vocab = self._text_tower(model).token_embedding.num_embeddings
        if vocab < self.tokenizer.vocab_size:
            raise ValueError(f"{config_file}: text vocab_size {vocab} < SimpleTokenizer's {self.tokenizer.vocab_size}")
        if self.gradient_checkpointing:
            model.set_grad_checkpointing(True)
        #: default candidate answers of :meth:`answer` (see :meth:`set_answer_candidates`)
        self.answer_candidates: Optional[Tuple[str, ...]] = None
        return model

    @staticmethod
    def _text_tower(model: torch.nn.Module) -> torch.nn.Module:
        """The module holding ``token_embedding`` (the model itself for ``CLIP``, ``.text`` otherwise)."""
        return model.text if hasattr(model, "text") and not hasattr(model, "token_embedding") else model

    def saved_config(self) -> Dict[str, Any]:
        """The loaded ``open_clip_config.json`` with the preprocessing in use (mean, std, interpolation,
        resize mode) written into ``preprocess_cfg`` (what :meth:`save` writes next to the weights)."""
        config = copy.deepcopy(self.config)
        pp = dict(config.get("preprocess_cfg", {}) or {})
        pp.update({k: self.preprocess_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                   if k in self.preprocess_cfg})
        pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
        config["preprocess_cfg"] = pp
        return config

    def fresh_model(self) -> torch.nn.Module:
        """A randomly initialised open_clip model of the loaded ``model_cfg`` (hook of ``reinitialize``)."""
        return build_open_clip_model(self.config["model_cfg"])

    # ----------------------------------------------------------------- inputs
    def caption(self, sample: VQASample) -> str:
        """Caption text paired with ``sample``'s image: ``f"{question} {answer}"``.

        A trigger inserted into the question (MEM) is part of the caption; defenses
        may also override or wrap this method. The question is kept verbatim so
        character spans of it map into the caption (:meth:`trigger_token_mask`).
        """
        return f"{sample.question} {sample.answer.strip()}"

    def encode_text_tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, L) of ``texts`` (SimpleTokenizer: start, BPE, end; truncated/padded to L)."""
        return self.tokenizer(list(texts)).to(self.device)

    def trigger_token_mask(self, image_hw: Tuple[int, int], samples: Sequence[VQASample],
                           spans: Sequence[Optional[Tuple[int, int]]]) -> torch.Tensor:
        """(N, L) bool mask of the caption tokens covering character ``spans`` of each question.

        Aligned with :meth:`encode_text_tokens` of the captions (start token at 0).
        Spans must lie on word boundaries (as ``toolkit.triggers.insert_trigger``
        produces); tokens cut off by the context length are not marked.
        ``image_hw`` is unused (captions do not depend on the image size).
        """
        del image_hw
        if len(spans) != len(samples):
            raise ValueError(f"{len(spans)} spans for {len(samples)} samples")
        if self.tokenizer.reduction_fn is not None:
            raise ValueError("trigger token positions need the plain truncating SimpleTokenizer (no reduction_mask)")
        mask = torch.zeros((len(samples), self.context_length), dtype=torch.bool)
        for i, (sample, span) in enumerate(zip(samples, spans)):
            if span is None:
                continue
            text, question = self.caption(sample), sample.question
            start, end = int(span[0]), int(span[1])
            if not 0 <= start < end <= len(question):
                raise ValueError(f"trigger span {span} outside the question (length {len(question)})")
            offset = text.find(question)
            if offset < 0:
                raise ValueError("the caption does not contain the question verbatim; cannot locate the span")
            lo, hi = offset + start, offset + end
            before, inside = self.tokenizer.encode(text[:lo]), self.tokenizer.encode(text[lo:hi])
            if before + inside + self.tokenizer.encode(text[hi:]) != self.tokenizer.encode(text):
                raise ValueError(f"trigger span {span} of {question!r} does not lie on word boundaries")
            first = 1 + len(before)  # after the start token
            last = min(first + len(inside), self.context_length - 1)  # the final slot holds the end token
            mask[i, first:last] = True
        return mask.to(self.device)

    def trigger_vocabulary(self):
        """Admissible trigger words: tokens that are a whole lowercase ASCII word of >= 2 letters
        (``"zebra</w>"``), as a :class:`toolkit.triggers.Vocabulary` (cached).

        Each such word re-encodes to exactly its one token (checked for open_clip's
        bundled vocabulary: 32849 words), so a swap changes one token.
        """
        if getattr(self, "_trigger_vocab", None) is None:
            import re

            from ..triggers import Vocabulary

            word = re.compile(r"^[a-z]{2,}</w>$")
            special = set(self.tokenizer.all_special_ids)
            pairs = [(tid, tok[:-4]) for tid, tok in sorted(self.tokenizer.decoder.items())
                     if tid not in special and word.match(tok)]
            self._trigger_vocab = Vocabulary(torch.tensor([t for t, _ in pairs]), tuple(w for _, w in pairs))
        return self._trigger_vocab

    def token_embeddings(self) -> torch.nn.Module:
        """The text tower's token-embedding module (captured by ``run(embedding_grad=True)``)."""
        return self._text_tower(self.model).token_embedding

    def embedding_matrix(self) -> torch.Tensor:
        """Token-embedding weights (V, D) of the text tower (for HotFlip scores)."""
        return self.token_embeddings().weight

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, E), float32, differentiable in ``pixels``."""
        return F.normalize(self.model.encode_image(self.pixel_inputs(pixels)).float(), dim=-1)

    def encode_texts(self, tokens: torch.Tensor, embeddings: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """L2-normalised text embeddings (N, E), float32, of token ids (N, L).

        With ``embeddings`` a list, the token embeddings (N, L, D) are replaced by
        a leaf requiring grad, appended to it (its ``.grad`` is filled by backward).
        """
        with self._capture_embeddings(embeddings) if embeddings is not None else contextlib.nullcontext():
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    # ----------------------------------------------------------------- loss
    def run(self, pixels: torch.Tensor, samples: Sequence[VQASample], *, embedding_grad: bool = False,
            captions: Optional[Sequence[str]] = None) -> ClipForward:
        """Contrastive forward pass of a batch.

        Args:
            pixels: (N, 3, H, W) in [0, 1] (gradients flow back to them).
            samples: the N samples; captions come from :meth:`caption` unless ``captions`` is given.
            embedding_grad: capture the caption token embeddings as a leaf requiring grad.
            captions: N caption texts overriding :meth:`caption` (e.g. with a trigger inserted).

        Loss: with cosine logits ``s = exp(logit_scale) * img @ txt.T`` (+ ``logit_bias`` if the
        model has one), sample i's loss is ``(CE(s[i, :], P_i) + CE(s[:, i], P_i)) / 2``, where
        ``P_i`` is uniform over the samples whose caption text equals i's (just i when
        captions are unique: the standard CLIP / MEM InfoNCE).
        """
        if len(samples) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images for {len(samples)} samples")
        texts = list(captions) if captions is not None else [self.caption(s) for s in samples]
        if len(texts) != len(samples):
            raise ValueError(f"{len(texts)} captions for {len(samples)} samples")
        tokens = self.encode_text_tokens(texts)
        captured: List[torch.Tensor] = []
        image_features = self.encode_images(pixels)
        text_features = self.encode_texts(tokens, captured if embedding_grad else None)
        logits = self.model.logit_scale.exp().float() * image_features @ text_features.T
        if getattr(self.model, "logit_bias", None) is not None:
            logits = logits + self.model.logit_bias.float()
        ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
        group = torch.tensor([ids[t] for t in texts], device=logits.device)
        same = (group[:, None] == group[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)  # symmetric: P_i is a row and a column
        loss_i = -(targets * logits.log_softmax(dim=1)).sum(dim=1)
        loss_t = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1)
        loss = 0.5 * (loss_i + loss_t)
        correct = group[logits.argmax(dim=1)] == group
        return ClipForward(loss, correct, logits, tokens, captured[0] if captured else None)

    def forward_samples(self, pixels: torch.Tensor, samples: Sequence[VQASample],
                        trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None, *,
                        attention_layers: int = 0, embedding_grad: bool = False,
                        image_index: Optional[torch.Tensor] = None) -> ClipForward:
        """:meth:`run` with ``trigger_spans`` (character spans of the questions) marked in
        ``result.trigger_mask``; the min-min engine's trigger search calls this.

        ``attention_layers`` > 0 raises :class:`CapabilityError` (no ``"attentions"`` capability).
        ``image_index`` (N,): sample n sees ``pixels[image_index[n]]`` (None: one image per sample).
        """
        if attention_layers:
            self.require("attentions", who="attention_layers")
        if image_index is not None:
            pixels = pixels[torch.as_tensor(image_index, dtype=torch.long)]
        result = self.run(pixels, samples, embedding_grad=embedding_grad)
        if trigger_spans is not None:
            result.trigger_mask = self.trigger_token_mask(tuple(pixels.shape[-2:]), samples, trigger_spans)
        return result

    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample symmetric InfoNCE (N,) and top-1 caption retrieval (N,) bool (see :meth:`run`)."""
        result = self.run(pixels, samples)
        return result.loss, result.correct

    def text_embedding_grad(self, pixels: torch.Tensor, samples: Sequence[VQASample],
                            captions: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient of the summed loss w.r.t. the caption token embeddings.

        Returns ``(loss (N,) detached, tokens (N, L), grad (N, L, D))``; parameters
        and ``pixels`` get no ``.grad`` (only the embedding leaf is differentiated).
        """
        with torch.enable_grad():
            result = self.run(pixels, samples, embedding_grad=True, captions=captions)
            (grad,) = torch.autograd.grad(result.loss.sum(), result.embeddings)
        return result.loss.detach(), result.tokens, grad

    # ----------------------------------------------------------------- answers
    def set_answer_candidates(self, candidates: Optional[Sequence[str]]) -> None:
        """Default candidate answers for :meth:`answer` (e.g. the label set, so that
        ``toolkit.metrics.accuracy.evaluate_answers`` works); None clears them."""
        self.answer_candidates = None if candidates is None else tuple(str(c) for c in candidates)

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8,
               candidates: Optional[Sequence[Any]] = None) -> List[str]:
        """Zero-shot choice: for each image, the candidate whose caption ``f"{question} {candidate}"``
        is most similar (cosine) to the image.

        Args:
            pixels: (N, 3, H, W) in [0, 1].
            questions: N questions.
            max_new_tokens: ignored (no generation; kept for interface compatibility).
            candidates: one list of answers shared by all images, or N lists (e.g. each
                sample's ``choices``); defaults to :attr:`answer_candidates`.

        Raises:
            ValueError: no candidates given and none set with :meth:`set_answer_candidates`
                (CLIP cannot generate free-form answers).
        """
        if candidates is None:
            candidates = self.answer_candidates
        if candidates is None or len(candidates) == 0:
            raise ValueError("ClipSurrogate.answer needs candidate answers (CLIP ranks answers, it cannot generate): "
                             "pass candidates=[...] (shared or one list per image) or call set_answer_candidates()")
        n = len(questions)
        if pixels.shape[0] != n:
            raise ValueError(f"{pixels.shape[0]} images for {n} questions")
        if all(isinstance(c, str) for c in candidates):
            per_image = [list(candidates)] * n
        else:
            per_image = [list(c) for c in candidates]
            if len(per_image) != n or any(not c for c in per_image):
                raise ValueError(f"candidates must be one list of answers or {n} non-empty lists")
        was_training = self.model.training
        self.model.eval()
        try:
            images = self.encode_images(pixels)
            out = []
            for i, (q, cands) in enumerate(zip(questions, per_image)):
                texts = [f"{q.strip()} {str(c).strip()}" for c in cands]
                sims = self.encode_texts(self.encode_text_tokens(texts)) @ images[i]
                out.append(str(cands[int(sims.argmax())]))
        finally:
            self.model.train(was_training)
        return out

    # ----------------------------------------------------------------- training
    def projector_parameters(self) -> List[torch.nn.Parameter]:
        """The final projections into the joint space: ``visual.proj`` (or a timm/ResNet tower's
        projection head) and ``text_projection``."""
        keys = ("visual.proj", "visual.head.proj", "visual.attnpool.c_proj", "text_projection")
        return [p for n, p in self.model.named_parameters()
                if any(n == k or n.startswith(k + ".") or n.endswith("." + k) or f".{k}." in n for k in keys)]

    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        """``"full"``: every parameter (``logit_scale`` included); ``"projector"``: the final
        projection layers (:meth:`projector_parameters`); ``"lora"``: not supported (ValueError)."""
        if mode == "full":
            return list(self.model.parameters())
        if mode == "projector":
            params = self.projector_parameters()
            if not params:
                raise ValueError(f"{self.family}: no projection parameters found in {type(self.model).__name__}")
            return params
        if mode == "lora":
            raise ValueError(f"{self.family}: LoRA adapters are not supported for open_clip surrogates; "
                             "use mode 'full' or 'projector'")
        raise ValueError(f"mode must be 'full', 'projector' or 'lora', got {mode!r}")
