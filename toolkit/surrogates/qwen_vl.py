"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL surrogates (transformers ``Qwen*VLForConditionalGeneration``).

Qwen2-VL (Wang et al. 2024), Qwen2.5-VL (Bai et al. 2025) and Qwen3-VL share the
"naive dynamic resolution" front end: an image is resized to multiples of
``patch * merge`` pixels (keeping its aspect ratio, within a pixel budget), cut
into ``patch x patch`` patches that are repeated ``temporal_patch_size`` times
(an image is a one-frame video), encoded by a ViT and merged ``merge x merge``
into one language-model token. Token positions use multimodal RoPE (M-RoPE),
computed from ``image_grid_thw`` and ``mm_token_type_ids``.

The pixel tensor a defense optimises has the raw image's size; the adapter's
:class:`DifferentiablePatchProcessor` repeats the real processor's resize
(uint8, antialiased bicubic, straight-through rounding), rescale, normalise
and patch flattening, so gradients reach the raw pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch

from .hf_lvlm import HFVisionLanguageSurrogate
from .processing import LENIENT_MODES, PixelSettings, grid_regions, normalisation_settings, resize_like_pil
from .registry import SURROGATES

__all__ = ["DifferentiablePatchProcessor", "PatchMergeSurrogate", "QwenVLSurrogate", "Qwen25VLSurrogate",
           "Qwen3VLSurrogate", "qwen_smart_resize"]



def qwen_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """Target (height, width) of Qwen2-VL's dynamic resize for a raw ``height`` x ``width`` image.

    Both sides become multiples of ``factor`` (= patch * merge), the area is
    brought into [min_pixels, max_pixels] by one common scale, and the aspect
    ratio is kept as closely as possible. Rounding follows the real processor
    (Python ``round``: half to even; floor when shrinking, ceil when growing).
    """
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    out_h = factor * round(height / factor)
    out_w = factor * round(width / factor)
    if out_h * out_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        out_h = max(factor, factor * math.floor(height / shrink / factor))
        out_w = max(factor, factor * math.floor(width / shrink / factor))
    elif out_h * out_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        out_h = factor * math.ceil(height * grow / factor)
        out_w = factor * math.ceil(width * grow / factor)
    return out_h, out_w


def _size_field(size: Any, name: str) -> Any:
    """Read ``name`` from a transformers ``SizeDict`` or a plain dict."""
    if isinstance(size, dict):
        return size.get(name)
    return getattr(size, name, None)


@dataclass(frozen=True, kw_only=True)
class DifferentiablePatchProcessor(PixelSettings):
    """Torch re-implementation of ``Qwen2VLImageProcessor`` (torchvision backend).

    Steps, as the real processor does them for a uint8 image: dynamic resize
    to a multiple of ``patch_size * merge_size`` (antialiased bicubic on uint8,
    i.e. width pass, round, height pass, round; rounding is straight-through
    here), rescale by ``rescale_factor``, normalise, then flatten patches in
    the order (merged row, merged column, row in merge window, column in merge
    window) with each patch laid out as (channel, temporal copy, y, x).

    Shapes: ``__call__`` takes (N, 3, H, W) floats in [0, 1] and returns
    ``pixel_values`` (N * gh * gw, 3 * T * p * p) and ``image_grid_thw`` (N, 3)
    long rows (1, gh, gw), gh / gw = resized height / width in patches.
    """

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_hf(cls, image_processor) -> "DifferentiablePatchProcessor":
        """Read the settings of a transformers Qwen2-VL style image processor."""
        size = image_processor.size
        return cls(
            patch_size=int(image_processor.patch_size),
            merge_size=int(image_processor.merge_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
            min_pixels=int(_size_field(size, "shortest_edge")),
            max_pixels=int(_size_field(size, "longest_edge")),
            mode=LENIENT_MODES.of(image_processor, missing=3),
            **normalisation_settings(image_processor, resize=True),
        )

    @property
    def factor(self) -> int:
        """Side multiple of the resized image (patch * merge pixels = one merged token)."""
        return self.patch_size * self.merge_size

    def resize_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) after the resize step for a raw ``height`` x ``width`` image."""
        if not self.do_resize:
            if height % self.factor or width % self.factor:
                raise ValueError(f"with do_resize=False the image sides must be multiples of {self.factor}, "
                                 f"got {height} x {width}")
            return height, width
        return qwen_smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        """Patch grid (gh, gw) of a raw ``height`` x ``width`` image."""
        rh, rw = self.resize_shape(height, width)
        return rh // self.patch_size, rw // self.patch_size

    def native_side(self) -> int:
        """Smallest square side the processor leaves unresized (a multiple of :attr:`factor` within budget)."""
        f = self.factor
        for k in range(1, 10_001):
            if self.resize_shape(k * f, k * f) == (k * f, k * f):
                return k * f
        return self.resize_shape(f, f)[0]

    def pixel_geometry(self, height: int, width: int) -> Tuple[float, float, float, float]:
        """(scale_y, scale_x, 0, 0): resized pixel (r, c) sees raw (r * scale_y, c * scale_x)."""
        rh, rw = self.resize_shape(height, width)
        return height / rh, width / rw, 0.0, 0.0

    def __call__(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values, image_grid_thw) of (N, 3, H, W) pixels in [0, 1] (see the class docstring)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        n, c, height, width = pixels.shape
        x = pixels * 255.0
        rh, rw = self.resize_shape(height, width)
        if (rh, rw) != (height, width):
            x = resize_like_pil(x, (rh, rw), self.mode, quantize=True)
        x = self.rescale_normalize(x)
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = rh // p, rw // p
        # (N, C, gh/m, m, p, gw/m, m, p) -> (N, gh/m, gw/m, m, m, C, p, p), then T copies after C
        x = x.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
        values = x.reshape(n * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=pixels.device)
        return values, grid


class PatchMergeSurrogate(HFVisionLanguageSurrogate):
    """Shared adapter of the patch-and-merge LVLMs (Qwen2/2.5/3-VL, GLM-4V).

    Image input: any size (N, 3, H, W) in [0, 1]; every image of a batch has
    the same size, so all get the same grid. ``image_size`` is the smallest
    square the processor passes through unresized (datasets can use any size).
    """

    prefix_cache = False  # multimodal rotary positions (3-D position ids) are computed over the whole sequence

    lora_target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    projector_key = "visual.merger"
    processor_class = DifferentiablePatchProcessor

    def _setup(self, model: torch.nn.Module) -> None:
        self.image_processor = self.processor_class.from_hf(self.processor.image_processor)
        vision = model.config.vision_config
        if int(vision.spatial_merge_size) != self.image_processor.merge_size or \
                int(vision.patch_size) != self.image_processor.patch_size:
            raise ValueError(f"{self.path}: processor patch/merge ({self.image_processor.patch_size}, "
                             f"{self.image_processor.merge_size}) differ from the vision config "
                             f"({vision.patch_size}, {vision.spatial_merge_size})")

    @property
    def image_size(self) -> tuple:
        """(side, side): the smallest square the processor leaves unresized (any size is accepted)."""
        side = self.image_processor.native_side()
        return (side, side)

    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``pixel_values`` (N * gh * gw, 3 * T * p * p) in the model dtype and ``image_grid_thw`` (N, 3)."""
        values, grid = self.image_processor(pixels)
        return {"pixel_values": values.to(self.dtype), "image_grid_thw": grid}

    def num_image_tokens(self, height: int, width: int) -> int:
        """Merged tokens of one raw image: (gh / merge) * (gw / merge)."""
        gh, gw = self.image_processor.grid(height, width)
        return (gh * gw) // (self.image_processor.merge_size ** 2)

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """Raw-pixel box of each merged token (row-major over the merged grid; resize undone)."""
        proc = self.image_processor
        gh, gw = proc.grid(height, width)
        m, cell = proc.merge_size, float(proc.factor)
        return grid_regions(gh // m, gw // m, (cell, cell), proc.pixel_geometry(height, width), height, width)

    def batch_extras(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``mm_token_type_ids`` (N, L): 1 at image tokens, 0 elsewhere (M-RoPE needs it)."""
        mask = (input_ids == self.image_token_id) & attention_mask.bool()
        return {"mm_token_type_ids": mask.long()}

    def answer_text(self, answer: str) -> str:
        """The answer right after the assistant header's newline (no leading space)."""
        return answer.strip()


@SURROGATES.register("qwen2_vl")
class QwenVLSurrogate(PatchMergeSurrogate):
    """Qwen2-VL model from a local ``save_pretrained`` folder.

    The projector ("merger": LayerNorm + 2-layer MLP over merge x merge patch
    features) is ``model.visual.merger``; an image enters the prompt as
    ``<|vision_start|>`` + T x ``<|image_pad|>`` + ``<|vision_end|>``.
    """

    family = "qwen2_vl"
    model_class = "Qwen2VLForConditionalGeneration"
    default_prompt_template = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")


@SURROGATES.register("qwen2_5_vl")
class Qwen25VLSurrogate(QwenVLSurrogate):
    """Qwen2.5-VL model: Qwen2-VL's interface; the ViT adds windowed attention and an MLP merger."""

    family = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"


@SURROGATES.register("qwen3_vl")
class Qwen3VLSurrogate(PatchMergeSurrogate):
    """Qwen3-VL model from a local ``save_pretrained`` folder.

    DeepStack: features of some ViT layers are projected by extra mergers
    (``visual.deepstack_merger_list``) and added to the image-token hidden
    states of the first language-model layers. Both the final merger and the
    DeepStack mergers map vision features into the language model, so the
    "projector" parameters are every module whose name contains ``merger``.
    ``output.attentions`` hold only the language-model self-attention maps
    (the ViT's are kept in ``image_outputs``).
    """

    family = "qwen3_vl"
    projector_key = "merger"
    model_class = "Qwen3VLForConditionalGeneration"
