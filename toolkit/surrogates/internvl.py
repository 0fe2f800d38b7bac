"""InternVL family surrogate (transformers-native ``InternVLForConditionalGeneration``, InternVL2.5 / 3 "-hf").

Dynamic tiling (Chen et al. 2024): the raw image is squashed onto the
``cols x rows`` grid of square tiles whose aspect ratio is closest to its own
(GOT-OCR2 ``crop_to_patches``, between ``min_patches`` and ``max_patches``
tiles), and a thumbnail of the whole image follows when there is more than one
tile. Each tile goes through the InternViT, a pixel shuffle merges 2x2 patch
features (``downsample_ratio`` 0.5) and an MLP projects them; in the text one
image is ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, Sequence, Tuple

import torch

from .hf_lvlm import HFVisionLanguageSurrogate
from .processing import (TILING_MODES, grid_cells, normalisation_settings, optimal_tiled_canvas, rescale_normalize,
                         resize_uint8, safe_boxes, to_raw)
from .registry import SURROGATES

__all__ = ["InternVLSurrogate"]


@SURROGATES.register("internvl")
class InternVLSurrogate(HFVisionLanguageSurrogate):
    """InternVL model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1] (one size per batch); the tile
    grid is chosen from (H, W) as ``GotOcr2ImageProcessor`` chooses it with the
    processor's call-time settings (``InternVLProcessor`` turns
    ``crop_to_patches`` on). ``pixel_values`` come out as (N * tiles, 3, tile,
    tile), images one after another, the thumbnail last, as the real processor
    concatenates them.

    Image-token regions: each ``<IMG_CONTEXT>`` token sees its merged
    (patch / downsample_ratio)-pixel cell of its tile, mapped back through the
    squash resize; thumbnail tokens see their cell of the whole image.
    ``<img>`` / ``</img>`` are ordinary text tokens (not counted).
    """

    family = "internvl"
    model_class = "InternVLForConditionalGeneration"

    def _setup(self, model: torch.nn.Module) -> None:
        cfg = model.config
        ip = self.processor.image_processor
        kwargs = self._call_kwargs()
        self.crop = bool(kwargs.get("crop_to_patches", getattr(ip, "crop_to_patches", False)))
        self.min_tiles = int(kwargs.get("min_patches", getattr(ip, "min_patches", 1)))
        self.max_tiles = int(kwargs.get("max_patches", getattr(ip, "max_patches", 12)))
        size = dict(ip.size)
        self.tile_hw = (int(size["height"]), int(size["width"]))
        self.do_resize = bool(getattr(ip, "do_resize", True))
        self.mode = TILING_MODES.of(ip, missing=3)
        self.norm = normalisation_settings(ip)
        vis = cfg.vision_config
        img = vis.image_size if isinstance(vis.image_size, (list, tuple)) else (vis.image_size, vis.image_size)
        patch = vis.patch_size if isinstance(vis.patch_size, (list, tuple)) else (vis.patch_size, vis.patch_size)
        if tuple(int(v) for v in img) != self.tile_hw:
            raise ValueError(f"internvl: processor tiles are {self.tile_hw}, the vision tower expects {tuple(img)}")
        if cfg.vision_feature_select_strategy != "default":
            raise NotImplementedError("internvl: only vision_feature_select_strategy='default' is supported")
        ratio = float(cfg.downsample_ratio)
        self.cell = (patch[0] / ratio, patch[1] / ratio)  # tile pixels per merged token
        self.grid = (round(img[0] * ratio / patch[0]), round(img[1] * ratio / patch[1]))
        self.per_tile = int(self.processor.image_seq_length)
        if self.per_tile != self.grid[0] * self.grid[1]:
            raise ValueError(f"internvl: processor image_seq_length {self.per_tile} != model's "
                             f"{self.grid[0] * self.grid[1]} tokens per tile")
        self._layouts = lru_cache(maxsize=256)(self._compute_layout)

    def _call_kwargs(self) -> Dict[str, Any]:
        """Image-processor settings the processor passes at call time (its class defaults)."""
        return dict(getattr(type(self.processor), "images_kwargs", None) or {})

    @property
    def image_size(self) -> tuple:
        """(tile_h, tile_w): the vision tower's input; raw images of any size are tiled."""
        return self.tile_hw

    # ----------------------------------------------------------------- layout
    def layout(self, height: int, width: int) -> Tuple[int, int, bool]:
        """(cols, rows, thumbnail) of the tiling of a raw ``height`` x ``width`` image (cached)."""
        return self._layouts(int(height), int(width))

    def _compute_layout(self, height: int, width: int) -> Tuple[int, int, bool]:
        if not self.crop:
            return 1, 1, False
        cols, rows = optimal_tiled_canvas(height, width, self.tile_hw, self.min_tiles, self.max_tiles)
        return cols, rows, cols * rows > 1

    def num_tiles(self, height: int, width: int) -> int:
        """Tiles one raw image becomes (grid tiles + thumbnail)."""
        cols, rows, thumb = self.layout(height, width)
        return cols * rows + int(thumb)

    # ----------------------------------------------------------------- family hooks
    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``pixel_values`` (N * tiles, 3, tile_h, tile_w)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        n, _, height, width = pixels.shape
        x = pixels * 255.0
        th, tw = self.tile_hw
        if self.crop:
            cols, rows, thumb = self.layout(height, width)
            canvas = resize_uint8(x, (rows * th, cols * tw), self.mode)
            tiles = [canvas[..., r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]
            if thumb:
                tiles.append(resize_uint8(x, self.tile_hw, self.mode))
        else:
            tiles = [x]
        if self.do_resize:
            tiles = [resize_uint8(t, self.tile_hw, self.mode) for t in tiles]
        out = rescale_normalize(torch.stack(tiles, dim=1), **self.norm)  # (N, tiles, 3, th, tw)
        return {"pixel_values": out.flatten(0, 1).to(self.dtype).contiguous()}

    def num_image_tokens(self, height: int, width: int) -> int:
        """``<IMG_CONTEXT>`` tokens: tokens per tile x tiles."""
        return self.per_tile * self.num_tiles(height, width)

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """(T, 4) raw-pixel boxes (y0, x0, y1, x1) of the ``<IMG_CONTEXT>`` tokens: grid tiles row-major,
        then the thumbnail."""
        th, tw = self.tile_hw
        cells = grid_cells(self.grid[0], self.grid[1], self.cell)
        cols, rows, thumb = self.layout(height, width)
        parts = []
        if self.crop:
            scale = (height / (rows * th), width / (cols * tw))
            for r in range(rows):
                for c in range(cols):
                    parts.append(to_raw(cells, scale, (-r * th, -c * tw)))
        else:  # one tile: the image squashed (or, without do_resize, as is)
            parts.append(to_raw(cells, (height / th, width / tw) if self.do_resize else (1.0, 1.0)))
        if thumb:
            parts.append(to_raw(cells, (height / th, width / tw)))
        return safe_boxes(torch.cat(parts), height, width)

    def expand_prompt(self, prompt: str, height: int, width: int) -> str:
        """``<IMG_CONTEXT>`` -> ``<img>`` + ``<IMG_CONTEXT>`` x n + ``</img>``, as ``InternVLProcessor`` does."""
        p = self.processor
        text = p.start_image_token + p.image_token * self.num_image_tokens(height, width) + p.end_image_token
        return prompt.replace(p.image_token, text, 1)

    def reference_inputs(self, images: Sequence[Any]) -> Dict[str, torch.Tensor]:
        """The real image processor's output with the processor's call-time settings (``crop_to_patches``)."""
        return dict(self.processor.image_processor(images=list(images), return_tensors="pt", **self._call_kwargs()))

    def answer_text(self, answer: str) -> str:
        """The answer follows ``assistant\\n`` directly (ChatML), no leading space."""
        return answer.strip()
