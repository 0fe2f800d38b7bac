"""Idefics3 and SmolVLM family surrogates (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

Image splitting (Laurençon et al. 2024; SmolVLM, Marafioti et al. 2025, keeps
the design with its own classes): the raw image's longest edge is resized to
``size["longest_edge"]`` (up or down), then both edges up to multiples of the
tile size ``max_image_size["longest_edge"]``; the result is cut into a
``rows x cols`` grid of square tiles and a squashed copy of it (the "global
image") follows. Each tile goes through a SigLIP-style ViT, a pixel shuffle
merges ``scale_factor``^2 patch features and a linear connector projects them.
In the text each tile is ``<fake_token_around_image><row_i_col_j>`` +
``<image>`` x image_seq_len, a newline ends each tile row, and the global image is
``\\n<fake_token_around_image><global-img>`` + ``<image>`` x image_seq_len +
``<fake_token_around_image>``. An image that fits one tile is not split: it is
the global image alone.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .hf_lvlm import HFVisionLanguageSurrogate
from .processing import (TILING_MODES, grid_cells, longest_edge_size, multiple_of_tile_size, normalisation_settings,
                         rescale_normalize, resize_uint8, safe_boxes, to_raw)
from .registry import SURROGATES

__all__ = ["Idefics3Surrogate", "SmolVLMSurrogate"]

#: absolute cap on the first resize (transformers' MAX_IMAGE_SIZE)
_MAX_IMAGE_SIZE = 4096


class _SplitImageSurrogate(HFVisionLanguageSurrogate):
    """Shared Idefics3 / SmolVLM mechanics (see the module docstring).

    Image input: any size (N, 3, H, W) in [0, 1] (one size per batch); the
    resize chain and tile grid are decided from (H, W) as the real image
    processor decides them, every resize repeated on uint8 levels. Outputs
    ``pixel_values`` (N, tiles, 3, T, T) (tiles row-major, the global image
    last) and, when the processor pads, ``pixel_attention_mask`` (N, tiles, T, T)
    (all ones: one image size per batch never needs padding).

    Image-token regions: a tile token sees its (patch * scale_factor)-pixel cell
    of its tile, mapped back through the resize chain to raw pixels; a global
    token sees its cell of the whole (squashed) image.
    """

    lora_target = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    projector_key = "connector"

    def _setup(self, model: torch.nn.Module) -> None:
        cfg = model.config
        ip = self.processor.image_processor
        size = dict(ip.size or {})
        self.longest = size.get("longest_edge")
        self.fixed = (int(size["height"]), int(size["width"])) if not self.longest and size.get("height") else None
        self.do_resize = bool(getattr(ip, "do_resize", True))
        self.split = bool(getattr(ip, "do_image_splitting", True))
        self.do_pad = bool(getattr(ip, "do_pad", True))
        self.tile = int(dict(ip.max_image_size)["longest_edge"])
        self.mode = TILING_MODES.of(ip, missing=1)
        self.norm = normalisation_settings(ip)
        vis = cfg.vision_config
        if int(vis.image_size) != self.tile:
            raise ValueError(f"{self.family}: processor tiles are {self.tile} px, the vision tower expects "
                             f"{vis.image_size}")
        self.cell = float(vis.patch_size * cfg.scale_factor)  # tile pixels per image token (after pixel shuffle)
        self.side = int(vis.image_size // vis.patch_size // cfg.scale_factor)
        self.per_tile = int(self.processor.image_seq_len)
        if self.per_tile != self.side * self.side:
            raise ValueError(f"{self.family}: processor image_seq_len {self.per_tile} != model's "
                             f"{self.side * self.side} tokens per tile")
        self._layouts = lru_cache(maxsize=256)(self._compute_layout)

    @property
    def image_size(self) -> tuple:
        """(T, T): the vision tower's tile; raw images of any size are split into tiles."""
        return (self.tile, self.tile)

    # ----------------------------------------------------------------- layout
    def layout(self, height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int], int, int]:
        """(size after the first resize, size that is split, rows, cols) for a raw image (cached).

        rows = cols = 0 means no split (a single global image of the split size).
        """
        return self._layouts(int(height), int(width))

    def _compute_layout(self, height: int, width: int):
        first = (height, width)
        if self.do_resize:
            first = (longest_edge_size(height, width, int(self.longest), _MAX_IMAGE_SIZE) if self.longest
                     else self.fixed)
        if not self.split:
            return first, (self.tile, self.tile), 0, 0
        second = multiple_of_tile_size(*first, self.tile)
        if second[0] > self.tile or second[1] > self.tile:
            return first, second, -(-second[0] // self.tile), -(-second[1] // self.tile)
        return first, second, 0, 0

    # ----------------------------------------------------------------- family hooks
    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``pixel_values`` (N, tiles, 3, T, T) and ``pixel_attention_mask`` (N, tiles, T, T) long."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        n, _, height, width = pixels.shape
        first, second, rows, cols = self.layout(height, width)
        x = pixels * 255.0
        if self.do_resize:
            x = resize_uint8(x, first, self.mode)
        x = resize_uint8(x, second, self.mode)
        t = self.tile
        frames: List[torch.Tensor] = [x[..., i * t:(i + 1) * t, j * t:(j + 1) * t]
                                      for i in range(rows) for j in range(cols)]
        if rows:
            frames.append(resize_uint8(x, (t, t), self.mode))
        else:
            frames = [x]
        out = rescale_normalize(torch.stack(frames, dim=1), **self.norm)
        result = {"pixel_values": out.to(self.dtype).contiguous()}
        if self.do_pad:
            result["pixel_attention_mask"] = torch.ones((n, len(frames), *out.shape[-2:]), dtype=torch.long,
                                                        device=pixels.device)
        return result

    def num_image_tokens(self, height: int, width: int) -> int:
        """``<image>`` tokens: image_seq_len x (rows x cols tiles + global image), or one image_seq_len unsplit."""
        _, _, rows, cols = self.layout(height, width)
        return self.per_tile * (rows * cols + 1 if rows else 1)

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """(T, 4) raw-pixel boxes (y0, x0, y1, x1) of the ``<image>`` tokens: tiles row-major, then the
        global image."""
        _, second, rows, cols = self.layout(height, width)
        cells = grid_cells(self.side, self.side, (self.cell, self.cell))
        t = self.tile
        scale = (height / second[0], width / second[1])
        parts = [to_raw(cells, scale, (-i * t, -j * t)) for i in range(rows) for j in range(cols)]
        parts.append(to_raw(cells, (height / t, width / t)) if rows else to_raw(cells, scale))
        return safe_boxes(torch.cat(parts), height, width)

    def _global_tag(self) -> str:
        """The global-image marker (``global_image_tag`` on Idefics3, ``global_image_token`` on SmolVLM)."""
        p = self.processor
        return getattr(p, "global_image_tag", None) or getattr(p, "global_image_token", "<global-img>")

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """The image placeholder -> tile rows and the global image, exactly as the real processor writes them."""
        p = self.processor
        _, _, rows, cols = self.layout(height, width)
        fake, image = p.fake_image_token, p.image_token
        block = image * self.per_tile
        text = ""
        for i in range(rows):
            text += "".join(f"{fake}<row_{i + 1}_col_{j + 1}>{block}" for j in range(cols)) + "\n"
        text += ("\n" if rows else "") + f"{fake}{self._global_tag()}{block}{fake}"
        return prompt.replace(image, text, 1)

    def reference_inputs(self, images: Sequence[Any]) -> Dict[str, torch.Tensor]:
        """The real image processor's output, one image per sample."""
        out = dict(self.processor.image_processor(images=[[im] for im in images], return_tensors="pt"))
        out.pop("rows", None)
        out.pop("cols", None)
        return out


@SURROGATES.register("idefics3")
class Idefics3Surrogate(_SplitImageSurrogate):
    """Idefics3 model (SigLIP + pixel-shuffle connector + Llama 3) from a local ``save_pretrained`` folder."""

    family = "idefics3"
    model_class = "Idefics3ForConditionalGeneration"


@SURROGATES.register("smolvlm")
class SmolVLMSurrogate(_SplitImageSurrogate):
    """SmolVLM model (Idefics3 design with SmolLM2 text model, own classes) from a local ``save_pretrained`` folder."""

    family = "smolvlm"
    model_class = "SmolVLMForConditionalGeneration"
