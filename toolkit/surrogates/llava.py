"""LLaVA family surrogate (transformers ``LlavaForConditionalGeneration``).

LLaVA-1.5 (Liu et al. 2023): CLIP ViT image encoder, MLP projector, Llama/Vicuna
language model; one image becomes (crop/patch)^2 tokens (CLS dropped under the
"default" feature strategy), inserted at the ``<image>`` placeholder.
"""
from __future__ import annotations

import torch

from .hf_lvlm import HFVisionLanguageSurrogate
from .processing import DifferentiableClipProcessor, grid_regions
from .registry import SURROGATES

__all__ = ["LlavaSurrogate"]


@SURROGATES.register("llava")
class LlavaSurrogate(HFVisionLanguageSurrogate):
    """LLaVA-1.5 style model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1]; resized (shortest edge),
    center-cropped and normalised differentiably as the CLIP image processor does.
    """

    family = "llava"
    model_class = "LlavaForConditionalGeneration"
    default_prompt_template = "USER: {image}\n{question} ASSISTANT:"  # LLaVA-1.5's conversation format

    def _setup(self, model: torch.nn.Module) -> None:
        self.image_processor = DifferentiableClipProcessor.from_hf(self.processor.image_processor)
        self.patch_size = int(model.config.vision_config.patch_size)
        self.strategy = model.config.vision_feature_select_strategy

    def num_image_tokens(self, height: int, width: int) -> int:
        """(crop / patch)^2 patch tokens per image, plus the CLS token under the "full" strategy."""
        h, w = self.image_processor.output_size
        n = (h // self.patch_size) * (w // self.patch_size)
        return n + (1 if self.strategy == "full" else 0)

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """Raw box (y0, x0, y1, x1) of each patch token, row-major (the CLS token first: the whole image), (T, 4)."""
        h, w = self.image_processor.output_size
        p = self.patch_size
        boxes = grid_regions(h // p, w // p, (p, p), self.image_processor.pixel_geometry(height, width), height, width)
        if self.strategy == "full":  # the CLS token summarises the whole image
            boxes = torch.cat([torch.tensor([[0.0, 0.0, float(height), float(width)]]), boxes])
        return boxes
