"""GLM-4V surrogate (transformers ``glm4v``: GLM-4.1V / GLM-4.5V style ``Glm4vForConditionalGeneration``).

GLM-4.1V-Thinking (GLM-V team, 2025) keeps Qwen2-VL's front end: dynamic
resolution in multiples of ``patch * merge`` pixels, patches repeated
``temporal_patch_size`` times and flattened in the same order, M-RoPE
positions. Differences handled here: the resize rule counts the pixel budget
over the two temporal copies and first upscales images smaller than one
merged patch; an image enters the prompt as
``<|begin_of_image|>`` + T x ``<|image|>`` + ``<|end_of_image|>``; the ViT
merges 2 x 2 patches with a strided convolution ("downsample") before the
projector ``visual.merger``; the language-model MLP is a fused ``gate_up_proj``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

from .qwen_vl import DifferentiablePatchProcessor, PatchMergeSurrogate
from .registry import SURROGATES

__all__ = ["DifferentiableGlm4vProcessor", "Glm4vSurrogate", "glm4v_smart_resize"]


def glm4v_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                       frames: int = 2, temporal_factor: int = 2) -> Tuple[int, int]:
    """Target (height, width) of GLM-4V's dynamic resize for a raw ``height`` x ``width`` image.

    As Qwen2-VL's rule, except that (1) a side shorter than ``factor`` first
    scales the image up (integer truncation) so that side reaches ``factor``,
    and (2) the budget [min_pixels, max_pixels] bounds frames x height x width,
    an image counting as ``frames`` = temporal_patch_size frames.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if frames < temporal_factor:
        raise ValueError(f"frames ({frames}) must be >= temporal_factor ({temporal_factor})")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    out_h = factor * round(height / factor)
    out_w = factor * round(width / factor)
    out_t = temporal_factor * round(frames / temporal_factor)
    if out_t * out_h * out_w > max_pixels:
        shrink = math.sqrt(frames * height * width / max_pixels)
        out_h = max(factor, factor * math.floor(height / shrink / factor))
        out_w = max(factor, factor * math.floor(width / shrink / factor))
    elif out_t * out_h * out_w < min_pixels:
        grow = math.sqrt(min_pixels / (frames * height * width))
        out_h = factor * math.ceil(height * grow / factor)
        out_w = factor * math.ceil(width * grow / factor)
    return out_h, out_w


@dataclass(frozen=True)
class DifferentiableGlm4vProcessor(DifferentiablePatchProcessor):
    """Torch re-implementation of ``Glm4vImageProcessor`` (torchvision backend).

    Same pipeline and output layout as :class:`DifferentiablePatchProcessor`
    (uint8 antialiased bicubic resize with straight-through rounding, rescale,
    normalise, patch flattening with temporal repetition); only the target size
    follows :func:`glm4v_smart_resize`.
    """

    def resize_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) after the resize step for a raw ``height`` x ``width`` image."""
        if not self.do_resize:
            return super().resize_shape(height, width)
        t = self.temporal_patch_size
        return glm4v_smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels,
                                  frames=t, temporal_factor=t)


@SURROGATES.register("glm4v")
class Glm4vSurrogate(PatchMergeSurrogate):
    """GLM-4V (``glm4v``) model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1]. ``mm_token_type_ids`` marks
    image tokens with 1 (the real processor uses 2 only inside video segments).
    LoRA targets the language model's attention projections and its fused
    ``gate_up_proj`` / ``down_proj`` MLP.
    """

    family = "glm4v"
    model_class = "Glm4vForConditionalGeneration"
    lora_target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_up_proj|down_proj)"
    projector_key = "visual.merger"
    processor_class = DifferentiableGlm4vProcessor
