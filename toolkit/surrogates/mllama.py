"""Mllama family surrogate (Llama 3.2 Vision, transformers ``MllamaForConditionalGeneration``).

Llama 3.2 Vision (Meta 2024): the image is cut into up to ``max_image_tiles``
square tiles (560 px in the released checkpoints) on the canvas that best fits
its aspect ratio, encoded by a tiled ViT (local + gated global transformer,
tile-position embeddings chosen by ``aspect_ratio_ids``), projected, and read
by the language model through gated cross-attention layers interleaved with
its self-attention layers.

The image is therefore NOT part of the self-attention sequence: the text holds
a single ``<|image|>`` token, and ``cross_attention_mask`` (N, L, images,
tiles) lets every token from ``<|image|>`` on read the image's real tiles. In
this adapter:

* :meth:`num_image_tokens` is the number of ``<|image|>`` tokens, 1;
* :meth:`image_token_regions` gives that token one box, the whole image;
* capability ``image_attention`` is not declared, and :meth:`select_attentions`
  returns the self-attention layers only (cross-attention maps are (L, tiles *
  patches), not (L, L)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .hf_lvlm import HFVisionLanguageSurrogate, TokenBatch, strip_template_bos
from .processing import (TORCHVISION_MODES, PixelSettings, native_uint8_resize, normalisation_settings,
                         resize_like_torchvision)
from .registry import SURROGATES

__all__ = ["MllamaSurrogate", "DifferentiableMllamaProcessor", "TileLayout", "wake_mllama_gates"]


@lru_cache(maxsize=16)
def _arrangements(max_tiles: int) -> Tuple[Tuple[int, int], ...]:
    """Tile grids (a, b) with a * b <= max_tiles, in the processor's order (a outer, b inner)."""
    return tuple((a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1) if a * b <= max_tiles)


@dataclass(frozen=True)
class TileLayout:
    """How one raw image is laid out on the tile canvas.

    Attributes:
        rows, cols: tiles along the height and the width (rows * cols used tiles).
        resized: (height, width) of the image after the aspect-keeping resize (top-left of the canvas).
        tile: tile side in pixels.
        aspect_ratio_id: 1-based index of (rows, cols) among the supported arrangements.
    """

    rows: int
    cols: int
    resized: Tuple[int, int]
    tile: int
    aspect_ratio_id: int

    @property
    def num_tiles(self) -> int:
        """Used tiles (rows * cols)."""
        return self.rows * self.cols


@lru_cache(maxsize=256)
def tile_layout(height: int, width: int, tile: int, max_tiles: int) -> TileLayout:
    """The Mllama image processor's canvas choice and resize for a ``height`` x ``width`` image.

    Canvas: among the tile grids allowed by ``max_tiles``, the smallest upscale
    (>= 1) that fits the image, else the largest downscale; ties go to the smaller
    canvas. Resize: each side clipped to [tile, canvas side], then the side with
    the smaller scale is kept and the other scaled (floored, >= 1).
    """
    grids = _arrangements(max_tiles)
    candidates = []
    for rows, cols in grids:
        ch, cw = rows * tile, cols * tile
        candidates.append((min(ch / height, cw / width), ch * cw, rows, cols))
    ups = [c for c in candidates if c[0] >= 1]
    best_scale = min(c[0] for c in ups) if ups else max(c[0] for c in candidates)
    chosen = [c for c in candidates if c[0] == best_scale]
    _, _, rows, cols = min(chosen, key=lambda c: c[1])  # first of the smallest area, as np.argmin
    ch, cw = rows * tile, cols * tile
    target_w = min(max(width, tile), cw)
    target_h = min(max(height, tile), ch)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.floor(height * scale_w) or 1, target_h)
    else:
        new_h, new_w = target_h, min(math.floor(width * scale_h) or 1, target_w)
    return TileLayout(rows, cols, (int(new_h), int(new_w)), tile, grids.index((rows, cols)) + 1)


@dataclass(frozen=True, kw_only=True)
class DifferentiableMllamaProcessor(PixelSettings):
    """Torch copy of ``MllamaImageProcessor`` (one image per sample).

    ``__call__`` maps (N, 3, H, W) floats in [0, 1] to ``pixel_values``
    (N, 1, max_tiles, 3, tile, tile), ``aspect_ratio_ids`` (N, 1) and
    ``aspect_ratio_mask`` (N, 1, max_tiles): aspect-keeping resize onto the best
    canvas (:func:`tile_layout`), zero padding (black, before normalisation) to
    the canvas, row-major tiles, rescale + normalise; unused tile slots are 0.
    """

    tile: int
    max_tiles: int
    native_uint8: bool = True

    @classmethod
    def from_hf(cls, image_processor) -> "DifferentiableMllamaProcessor":
        """Read the settings of a transformers ``MllamaImageProcessor``."""
        size = dict(image_processor.size)
        mode = TORCHVISION_MODES.of(image_processor, missing=2)
        return cls(
            tile=int(size["height"]), max_tiles=int(image_processor.max_image_tiles), mode=mode,
            **normalisation_settings(image_processor),
            native_uint8=native_uint8_resize(mode),
        )

    def layout(self, height: int, width: int) -> TileLayout:
        """Tile layout of a raw ``height`` x ``width`` image."""
        return tile_layout(int(height), int(width), self.tile, self.max_tiles)

    def __call__(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] (one size) -> the model's image inputs (see the class docstring)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        n = pixels.shape[0]
        lay = self.layout(*pixels.shape[-2:])
        t = self.tile
        x = resize_like_torchvision(pixels * 255.0, lay.resized, self.mode, self.native_uint8)
        x = F.pad(x, (0, lay.cols * t - x.shape[-1], 0, lay.rows * t - x.shape[-2]))  # bottom / right, value 0
        x = self.rescale_normalize(x)
        tiles = x.reshape(n, 3, lay.rows, t, lay.cols, t).permute(0, 2, 4, 1, 3, 5).reshape(n, lay.num_tiles, 3, t, t)
        if lay.num_tiles < self.max_tiles:
            tiles = torch.cat([tiles, tiles.new_zeros(n, self.max_tiles - lay.num_tiles, 3, t, t)], dim=1)
        ids = torch.full((n, 1), lay.aspect_ratio_id, dtype=torch.long, device=pixels.device)
        mask = torch.zeros((n, 1, self.max_tiles), dtype=torch.long, device=pixels.device)
        mask[:, :, :max(lay.num_tiles, 1)] = 1
        return {"pixel_values": tiles.unsqueeze(1), "aspect_ratio_ids": ids, "aspect_ratio_mask": mask}


@torch.no_grad()
def wake_mllama_gates(model: torch.nn.Module, value: float = math.pi / 4) -> None:
    """Set Mllama's zero-initialised tanh gates to ``value`` (in place).

    transformers initialises the cross-attention gates (``cross_attn_attn_gate``,
    ``cross_attn_mlp_gate``) and the vision tile-embedding gates to zero, so a
    fresh model ignores the image (image gradients exactly zero) and
    ``aspect_ratio_ids``. Only gates that are exactly zero are changed (trained
    or loaded weights are left alone); pi / 4 is the value the original code
    gives its gated vision layers (tanh = 0.66).
    """
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cross_attn_attn_gate", "cross_attn_mlp_gate", "gate") and not param.any():
            param.fill_(value)


@SURROGATES.register("mllama")
class MllamaSurrogate(HFVisionLanguageSurrogate):
    """Llama 3.2 Vision (Mllama) model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1] (one image per sample, all of
    one size); tiled differentiably as the Mllama image processor does.
    ``num_image_tokens`` = 1 (the ``<|image|>`` placeholder; the image is read by
    cross-attention, see the module docstring).
    """

    prefix_cache = False  # the image enters through cross-attention layers, not the token prefix

    family = "mllama"
    model_class = "MllamaForConditionalGeneration"
    capabilities = HFVisionLanguageSurrogate.capabilities - {"image_attention"}

    def _setup(self, model: torch.nn.Module) -> None:
        ip = self.processor.image_processor
        self.image_processor = DifferentiableMllamaProcessor.from_hf(ip)
        vision = model.config.vision_config
        if int(vision.image_size) != self.image_processor.tile or int(vision.max_num_tiles) != ip.max_image_tiles:
            raise ValueError(f"{self.path}: image processor tiles ({self.image_processor.tile} px, "
                             f"{ip.max_image_tiles}) do not match the vision model ({vision.image_size} px, "
                             f"{vision.max_num_tiles})")
        text = model.config.text_config
        self.cross_attention_layers = frozenset(int(i) for i in text.cross_attention_layers)
        self.num_text_layers = int(text.num_hidden_layers)

    @property
    def image_size(self) -> tuple:
        """The largest square canvas of whole tiles: a square image of this size is tiled without resizing."""
        k = math.isqrt(self.image_processor.max_tiles)
        return (k * self.image_processor.tile,) * 2

    # ----------------------------------------------------------------- images
    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``pixel_values`` (N, 1, T, 3, t, t) in the model dtype, ``aspect_ratio_ids`` (N, 1) and
        ``aspect_ratio_mask`` (N, 1, T) from (N, 3, H, W) in [0, 1] (differentiable)."""
        out = self.image_processor(pixels)
        out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of ``<|image|>`` tokens in the text: 1 (the pixels enter by cross-attention, not as tokens)."""
        return 1

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """One box per ``<|image|>`` token: the whole raw image, (1, 4) = [[0, 0, height, width]]."""
        return torch.tensor([[0.0, 0.0, float(height), float(width)]])

    def reference_input_ids(self, prompt: str, image: Any) -> torch.Tensor:
        """The real processor's ids for the templated prompt, called as documented for chat prompts:
        nested image list, ``add_special_tokens=False`` (the processor itself puts BOS first)."""
        return self.processor(text=[prompt], images=[[image]], add_special_tokens=False,
                              return_tensors="pt")["input_ids"]

    # ----------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """Chat-template prompt ending with the assistant header (template BOS dropped when the tokenizer
        adds one)."""
        return strip_template_bos(self.tokenizer, super().prompt_text(question))

    def answer_text(self, answer: str) -> str:
        """The answer follows the assistant header's blank line: no leading space."""
        return answer.strip()

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """Unchanged: the processor inserts no image tokens (``<|image|>`` stays a single token)."""
        return prompt

    def cross_attention_mask(self, input_ids: torch.Tensor, image_hw: Tuple[int, int]) -> torch.Tensor:
        """``cross_attention_mask`` (N, L, 1, max_tiles) long: 1 from the ``<|image|>`` token to the end of the
        row (padding included, as the processor does) on the image's used tiles, 0 elsewhere."""
        n, length = input_ids.shape
        used = self.image_processor.layout(*image_hw).num_tiles
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(1)
        if not bool((counts == 1).all()):
            raise ValueError(f"mllama: expected exactly one image token per row, got {counts.tolist()}")
        start = is_image.long().argmax(1)  # (N,)
        rows = (torch.arange(length, device=input_ids.device)[None] >= start[:, None]).long()  # (N, L)
        mask = torch.zeros((n, length, 1, self.image_processor.max_tiles), dtype=torch.long, device=input_ids.device)
        mask[:, :, 0, :used] = rows[:, :, None]
        return mask

    def encode(self, questions: Sequence[str], answers: Optional[Sequence[str]], image_hw: Tuple[int, int],
               padding_side: str = "right",
               trigger_spans: Optional[Sequence[Optional[Tuple[int, int]]]] = None) -> TokenBatch:
        """As the base class, plus ``extras["cross_attention_mask"]`` for images of size ``image_hw``."""
        batch = super().encode(questions, answers, image_hw, padding_side=padding_side, trigger_spans=trigger_spans)
        batch.extras["cross_attention_mask"] = self.cross_attention_mask(batch.input_ids, tuple(image_hw))
        return batch

    def select_attentions(self, output: Any) -> Tuple[torch.Tensor, ...]:
        """Self-attention maps (N, heads, L, L) of the language model, cross-attention layers left out."""
        maps: List[torch.Tensor] = [a for a in (output.attentions or ()) if a is not None]
        if len(maps) == self.num_text_layers:  # one map per layer, in layer order
            return tuple(a for i, a in enumerate(maps) if i not in self.cross_attention_layers)
        return tuple(a for a in maps if a.shape[-1] == a.shape[-2])  # cross layers skipped (no image)

    # ----------------------------------------------------------------- training
    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        """Fresh random weights (seeded), with the zero-initialised gates opened."""
        super().reinitialize(seed)
        wake_mllama_gates(self.model)
