"""PaliGemma family surrogate (transformers ``PaliGemmaForConditionalGeneration``).

PaliGemma (Beyer et al. 2024): a SigLIP image encoder at a fixed resolution
(224 / 448 / 896 px), a linear projector and a Gemma (PaliGemma 2: Gemma 2)
language model trained as a prefix-LM. There is no chat template: the input
is ``"<image>" * N + "<bos>" + prefix + "\\n"`` and the answer (the "suffix")
follows, ended by ``<eos>``. ``token_type_ids`` are 0 on the prefix (image,
BOS, prompt, newline: one bidirectional block) and 1 on the suffix (causal),
exactly as the processor returns them when given ``suffix=``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from .hf_lvlm import HFVisionLanguageSurrogate, TokenBatch
from .processing import DifferentiableFixedSizeProcessor, grid_regions
from .registry import SURROGATES

__all__ = ["PaliGemmaSurrogate"]


@SURROGATES.register("paligemma")
class PaliGemmaSurrogate(HFVisionLanguageSurrogate):
    """PaliGemma model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1]; resized (aspect ratio not
    kept) to the SigLIP resolution and normalised, as ``SiglipImageProcessor``
    does. One image = (size / patch)^2 tokens, one per ViT patch, row-major.

    Prompt: :meth:`prompt_text` returns what a user hands the real processor
    (``"<image>" + task_prefix + question``); :meth:`expand_prompt` applies the
    processor's rewriting (BOS after the image, trailing newline, image tokens
    expanded). ``task_prefix`` (class attribute, default empty) can carry a
    checkpoint's task convention such as ``"answer en "``.
    """

    prefix_cache = False  # the image and the question form a bidirectional prefix, so prefix tokens see the trigger

    family = "paligemma"
    model_class = "PaliGemmaForConditionalGeneration"
    #: text put before the question (the pt / mix checkpoints were trained on e.g. "answer en ").
    task_prefix: str = ""

    def _setup(self, model: torch.nn.Module) -> None:
        self.image_processor = DifferentiableFixedSizeProcessor.from_hf(self.processor.image_processor)
        vision = model.config.vision_config
        self.patch_size = int(vision.patch_size)
        self.patches_per_side = int(vision.image_size) // self.patch_size
        if tuple(self.image_processor.output_size) != (int(vision.image_size),) * 2:
            raise ValueError(f"{self.path}: image processor size {self.image_processor.output_size} does not "
                             f"match the vision tower's {vision.image_size}")
        seq = int(self.processor.image_seq_length)
        if seq != self.patches_per_side ** 2:
            raise ValueError(f"{self.path}: processor image_seq_length {seq} != {self.patches_per_side ** 2} patches")
        self.image_token = self.processor.image_token

    # ----------------------------------------------------------------- images
    def num_image_tokens(self, height: int, width: int) -> int:
        """(S / patch)^2 image tokens per image, whatever the raw size."""
        return self.patches_per_side ** 2

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """Raw box (y0, x0, y1, x1) of each patch token, row-major, (T, 4)."""
        p = float(self.patch_size)
        return grid_regions(self.patches_per_side, self.patches_per_side, (p, p),
                            self.image_processor.pixel_geometry(height, width), height, width)

    # ----------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """The processor's text input: one ``<image>`` then the prefix (no chat template exists)."""
        return f"{self.image_token}{self.task_prefix}{question}"

    def answer_text(self, answer: str) -> str:
        """The suffix follows the prefix's newline: no leading space."""
        return answer.strip()

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """The processor's rewriting: BOS after the last ``<image>``, a closing newline, image tokens expanded."""
        end = prompt.rfind(self.image_token) + len(self.image_token)
        text = prompt[:end] + self.tokenizer.bos_token + prompt[end:] + "\n"
        image = self.image_token * self.num_image_tokens(height, width)
        return text.replace(self.image_token, image, 1)

    def batch_extras(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``token_type_ids`` (N, L), all 0 (prefix); :meth:`encode` marks the suffix with 1."""
        return {"token_type_ids": torch.zeros_like(input_ids)}

    def encode(self, questions: Sequence[str], answers: Optional[Sequence[str]], image_hw: Tuple[int, int],
               padding_side: str = "right",
               trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None) -> TokenBatch:
        """As the base class, with ``token_type_ids`` = 1 on the suffix (answer + EOS, the labelled tokens)."""
        batch = super().encode(questions, answers, image_hw, padding_side=padding_side, trigger_spans=trigger_spans)
        batch.extras["token_type_ids"] = (batch.labels != -100).long()
        return batch

    def text_inputs(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Text-only inputs for :meth:`text_nll`, scored causally as a suffix.

        PaliGemma's text model is configured bidirectional; without ``token_type_ids``
        an unpadded batch is scored with a non-causal mask (later tokens leak into
        earlier predictions), so every token is marked as suffix (``token_type_ids`` = 1,
        causal) here. The processor turns the tokenizer's BOS off, so it is prepended explicitly.
        """
        inputs = super().text_inputs([self.tokenizer.bos_token + t for t in texts])
        inputs["token_type_ids"] = torch.ones_like(inputs["input_ids"])
        return inputs
