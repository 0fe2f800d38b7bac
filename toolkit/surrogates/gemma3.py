"""Gemma 3 family surrogate (transformers ``Gemma3ForConditionalGeneration``).

Gemma 3 (Gemma Team 2025): a SigLIP image encoder at a fixed resolution
(896 px in the released checkpoints), its patch grid average-pooled to
``mm_tokens_per_image`` soft tokens (16 x 16 = 256), RMS-normalised and
projected into the Gemma 3 language model. In the text, the chat template's
``<start_of_image>`` becomes ``"\\n\\n<start_of_image>" + "<image_soft_token>" * 256
+ "<end_of_image>\\n\\n"``; ``token_type_ids`` (1 at soft tokens) make the image
block attend to itself bidirectionally. Pan-and-scan crops are not modelled
(the processor's default is off).
"""
from __future__ import annotations

import logging
import math
from typing import Dict

import torch

from .hf_lvlm import HFVisionLanguageSurrogate, strip_template_bos
from .processing import DifferentiableFixedSizeProcessor, grid_regions
from .registry import SURROGATES

__all__ = ["Gemma3Surrogate", "wake_gemma3_projector"]

log = logging.getLogger(__name__)


@torch.no_grad()
def wake_gemma3_projector(model: torch.nn.Module, seed: int = 0) -> None:
    """Give a zero-initialised Gemma 3 projection matrix random weights (in place, seeded).

    transformers initialises ``mm_input_projection_weight`` to zeros, so a fresh
    model ignores the image and every image gradient is exactly zero. Entries
    are drawn N(0, initializer_range^2); a matrix with any non-zero entry (trained
    or loaded weights) is left alone.
    """
    std = float(getattr(model.config, "initializer_range", None) or 0.02)
    for name, param in model.named_parameters():
        if name.endswith("mm_input_projection_weight") and not param.any():
            gen = torch.Generator().manual_seed(int(seed) + 7919)
            param.copy_(torch.randn(param.shape, generator=gen) * std)


@SURROGATES.register("gemma3")
class Gemma3Surrogate(HFVisionLanguageSurrogate):
    """Gemma 3 vision-language model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1]; resized to the SigLIP
    resolution without keeping the aspect ratio (as the processor does), then
    normalised. One image = ``mm_tokens_per_image`` soft tokens; soft token k
    covers a ``pool x pool`` block of ViT patches (``pool`` = patches per side /
    tokens per side), in row-major order.
    """

    family = "gemma3"
    model_class = "Gemma3ForConditionalGeneration"

    def _setup(self, model: torch.nn.Module) -> None:
        ip = self.processor.image_processor
        if getattr(ip, "do_pan_and_scan", False):
            log.warning("%s: pan-and-scan is enabled in the image processor; the surrogate feeds the model the "
                        "single resized image only", self.path)
        self.image_processor = DifferentiableFixedSizeProcessor.from_hf(ip)
        cfg = model.config
        vision = cfg.vision_config
        self.patch_size = int(vision.patch_size)
        self.patches_per_side = int(vision.image_size) // self.patch_size
        self.tokens_per_side = int(math.isqrt(int(cfg.mm_tokens_per_image)))
        self.pool = self.patches_per_side // self.tokens_per_side
        if tuple(self.image_processor.output_size) != (int(vision.image_size),) * 2:
            raise ValueError(f"{self.path}: image processor size {self.image_processor.output_size} does not "
                             f"match the vision tower's {vision.image_size}")
        seq = getattr(self.processor, "image_seq_length", None)
        if seq is not None and int(seq) != self.tokens_per_side ** 2:
            raise ValueError(f"{self.path}: processor image_seq_length {seq} != mm_tokens_per_image "
                             f"{cfg.mm_tokens_per_image}")
        tok = self.tokenizer
        self.boi_token, self.eoi_token, self.soft_token = tok.boi_token, tok.eoi_token, tok.image_token

    # ----------------------------------------------------------------- images
    def num_image_tokens(self, height: int, width: int) -> int:
        """Soft tokens per image (``mm_tokens_per_image``; independent of the raw size)."""
        return self.tokens_per_side ** 2

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """Raw box (y0, x0, y1, x1) of each soft token: its pooled block of patches, row-major, (T, 4)."""
        cell = float(self.pool * self.patch_size)
        return grid_regions(self.tokens_per_side, self.tokens_per_side, (cell, cell),
                            self.image_processor.pixel_geometry(height, width), height, width)

    # ----------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """Chat-template prompt ending with ``<start_of_turn>model\\n`` (template BOS dropped when the
        tokenizer adds one)."""
        return strip_template_bos(self.tokenizer, super().prompt_text(question))

    def answer_text(self, answer: str) -> str:
        """The answer starts a new line after ``model``: no leading space."""
        return answer.strip()

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """Replace the first ``<start_of_image>`` by the processor's full image sequence."""
        soft = self.soft_token * self.num_image_tokens(height, width)
        return prompt.replace(self.boi_token, f"\n\n{self.boi_token}{soft}{self.eoi_token}\n\n", 1)

    def batch_extras(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``token_type_ids`` (N, L): 1 at soft image tokens (bidirectional block), 0 elsewhere."""
        return {"token_type_ids": (input_ids == self.image_token_id).long()}

    # ----------------------------------------------------------------- training
    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        """Fresh random weights (seeded), with the zero-initialised projector made non-zero."""
        super().reinitialize(seed)
        wake_gemma3_projector(self.model, seed)
