"""LLaVA-NeXT (LLaVA-1.6) family surrogate (transformers ``LlavaNextForConditionalGeneration``).

"AnyRes" (Liu et al. 2024): the raw image is fitted (aspect kept) into the
best of a list of canvas resolutions ("grid pinpoints"), zero-padded to it and
cut into tiles of the vision tower's size; a squashed copy of the whole image
(the "base" tile) comes first. The tile features are reassembled into one
feature grid, the rows/columns that lie in the padding are cut away
("unpadding") and an ``image_newline`` embedding ends every grid row.

Token order of one image: base tile (g x g, row-major), then every kept grid
row (its kept columns, then one newline token), g = tile // patch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from .hf_lvlm import HFVisionLanguageSurrogate
from .processing import (TILING_MODES, fit_within, grid_cells, normalisation_settings, rescale_normalize, resize_uint8,
                         safe_boxes, select_best_resolution, shortest_edge_size, to_raw, union_box)
from .registry import SURROGATES

__all__ = ["LlavaNextSurrogate", "AnyresLayout"]


@dataclass(frozen=True)
class AnyresLayout:
    """How one raw image of a given size is tiled (all integers, processed pixels / feature cells).

    Attributes:
        canvas: (height, width) best-fit resolution the image is padded to.
        fitted: (height, width) of the aspect-preserving resize inside the canvas.
        offset: (top, left) padding before the fitted image.
        tiles: (rows, cols) of tiles cut from the canvas.
        rows, cols: half-open kept feature rows / columns of the full (rows * g, cols * g) grid after unpadding.
    """

    canvas: Tuple[int, int]
    fitted: Tuple[int, int]
    offset: Tuple[int, int]
    tiles: Tuple[int, int]
    rows: Tuple[int, int]
    cols: Tuple[int, int]


@SURROGATES.register("llava_next")
class LlavaNextSurrogate(HFVisionLanguageSurrogate):
    """LLaVA-NeXT model from a local ``save_pretrained`` folder.

    Image input: any size (N, 3, H, W) in [0, 1] (one size per batch); the
    canvas, padding, tiles and ``image_sizes`` are derived from (H, W) exactly as
    ``LlavaNextImageProcessor`` does. ``pixel_values`` come out as
    (N, 1 + tiles, 3, tile, tile). Only the ``"default"`` feature strategy (CLS
    dropped) is supported, the one LLaVA-NeXT checkpoints use.

    Image-token regions: base-tile tokens see their cell of the squashed whole
    image, grid tokens their cell of the fitted image (cells reaching into the
    padding are clipped to the image), and each newline token sees the union of
    its grid row (the row of the image it terminates).
    """

    family = "llava_next"
    default_prompt_template = "USER: {image}\n{question} ASSISTANT:"  # the Vicuna-based LLaVA-NeXT format
    model_class = "LlavaNextForConditionalGeneration"

    def _setup(self, model: torch.nn.Module) -> None:
        cfg = model.config
        if cfg.vision_feature_select_strategy != "default":
            raise NotImplementedError("llava_next: only vision_feature_select_strategy='default' is supported")
        ip = self.processor.image_processor
        self.mode = TILING_MODES.of(ip, missing=3)
        self.norm = normalisation_settings(ip)
        self.tile = int(cfg.vision_config.image_size)
        self.patch = int(cfg.vision_config.patch_size)
        self.pinpoints = [(int(h), int(w)) for h, w in (ip.image_grid_pinpoints or cfg.image_grid_pinpoints)]
        if sorted(self.pinpoints) != sorted((int(h), int(w)) for h, w in cfg.image_grid_pinpoints):
            raise ValueError("llava_next: the processor's and the model's image_grid_pinpoints differ")
        size = dict(ip.size)
        crop = dict(getattr(ip, "crop_size", None) or {})
        self.size = size
        self.do_resize = bool(getattr(ip, "do_resize", True))
        self.crop = ((int(crop["height"]), int(crop["width"])) if getattr(ip, "do_center_crop", False) and crop
                     else None)
        self.base_size = ((size["height"], size["width"]) if size.get("height") and size.get("width")
                          else (size["shortest_edge"], size["shortest_edge"]))
        self.cut = int(crop.get("height") or size.get("height") or size["shortest_edge"])
        out = tuple(self._finish_geometry(self.cut, self.cut)[4:])
        if out != (self.tile, self.tile):
            raise ValueError(f"llava_next: processed tiles are {out}, the vision tower expects {self.tile}")
        if any(h % self.cut or w % self.cut for h, w in self.pinpoints):
            raise NotImplementedError("llava_next: grid pinpoints must be multiples of the tile size")
        self._layouts = lru_cache(maxsize=256)(self._compute_layout)

    @property
    def image_size(self) -> tuple:
        """(tile, tile): the vision tower's input; raw images of any size are tiled."""
        return (self.tile, self.tile)

    # ----------------------------------------------------------------- per-tile finishing
    def _finish_geometry(self, height: int, width: int) -> Tuple[int, int, int, int, int, int]:
        """Per-tile resize + center crop of a ``height`` x ``width`` tile, as the processor does them:
        (resized_h, resized_w, crop_top, crop_left, out_h, out_w); a negative crop offset is zero padding
        (crop larger than the resized tile). Output pixel r sees resized pixel r + crop_top."""
        rh, rw = height, width
        if self.do_resize:
            if self.size.get("shortest_edge"):
                rh, rw = shortest_edge_size(height, width, int(self.size["shortest_edge"]))
            else:
                rh, rw = int(self.size["height"]), int(self.size["width"])
        if self.crop is None:
            return rh, rw, 0, 0, rh, rw
        oh, ow = self.crop
        top = (rh - oh) // 2 if rh >= oh else -((oh - rh) // 2)
        left = (rw - ow) // 2 if rw >= ow else -((ow - rw) // 2)
        return rh, rw, top, left, oh, ow

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Per-tile resize, center crop, rescale and normalise of (M, 3, h, w) 0..255 floats."""
        rh, rw, top, left, oh, ow = self._finish_geometry(*x.shape[-2:])
        x = resize_uint8(x, (rh, rw), self.mode)
        if self.crop is not None:
            pt, pl = max(-top, 0), max(-left, 0)
            pb, pr = max(oh - rh, 0) - pt, max(ow - rw, 0) - pl
            if pt or pl or pb or pr:
                x = F.pad(x, [pl, pr, pt, pb])
            x = x[..., top + pt:top + pt + oh, left + pl:left + pl + ow]
        return rescale_normalize(x, **self.norm)

    def _tile_map(self, height: int, width: int) -> Tuple[float, float, float, float]:
        """(scale_y, scale_x, top, left): finished-tile pixel p of a ``height`` x ``width`` tile sees tile
        pixel (p + top) * scale."""
        rh, rw, top, left, _, _ = self._finish_geometry(height, width)
        return height / rh, width / rw, float(top), float(left)

    # ----------------------------------------------------------------- layout
    def layout(self, height: int, width: int) -> AnyresLayout:
        """The tiling of a raw ``height`` x ``width`` image (cached)."""
        return self._layouts(int(height), int(width))

    def _compute_layout(self, height: int, width: int) -> AnyresLayout:
        ch, cw = select_best_resolution(height, width, self.pinpoints)
        fh, fw = fit_within(height, width, (ch, cw))
        offset = ((ch - fh) // 2, (cw - fw) // 2)
        tiles = (ch // self.tile, cw // self.tile)
        g = self.tile // self.patch
        gh, gw = tiles[0] * g, tiles[1] * g
        # unpadding at feature level, as the model's unpad_image (and the processor's token count) do it
        if width / height > gw / gh:
            new_h = int(round(height * (gw / width), 7))
            pad = (gh - new_h) // 2
            rows, cols = (pad, gh - pad), (0, gw)
        else:
            new_w = int(round(width * (gh / height), 7))
            pad = (gw - new_w) // 2
            rows, cols = (0, gh), (pad, gw - pad)
        return AnyresLayout((ch, cw), (fh, fw), offset, tiles, rows, cols)

    # ----------------------------------------------------------------- family hooks
    def pixel_inputs(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``pixel_values`` (N, 1 + tiles, 3, tile, tile) and ``image_sizes`` (N, 2) long."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
        n, _, height, width = pixels.shape
        lay = self.layout(height, width)
        x = pixels * 255.0
        canvas = resize_uint8(x, lay.fitted, self.mode)
        top, left = lay.offset
        bottom = lay.canvas[0] - lay.fitted[0] - top
        right = lay.canvas[1] - lay.fitted[1] - left
        canvas = F.pad(canvas, (left, right, top, bottom))
        d = self.cut
        parts: List[torch.Tensor] = [resize_uint8(x, self.base_size, self.mode)]
        parts += [canvas[..., i:i + d, j:j + d] for i in range(0, lay.canvas[0], d) for j in range(0, lay.canvas[1], d)]
        if len({tuple(p.shape[-2:]) for p in parts}) == 1:
            out = self._finish(torch.stack(parts, dim=1).flatten(0, 1))
        else:  # base tile of another size than the cut tiles: finish separately
            out = torch.stack([self._finish(p) for p in parts], dim=1).flatten(0, 1)
        out = out.view(n, len(parts), *out.shape[1:])
        sizes = torch.tensor([[height, width]] * n, dtype=torch.long, device=pixels.device)
        return {"pixel_values": out.to(self.dtype).contiguous(), "image_sizes": sizes}

    def num_image_tokens(self, height: int, width: int) -> int:
        """Base tile g*g + kept grid cells + one newline per kept grid row."""
        lay = self.layout(height, width)
        g = self.tile // self.patch
        kept_rows = lay.rows[1] - lay.rows[0]
        return g * g + kept_rows * (lay.cols[1] - lay.cols[0]) + kept_rows

    def image_token_regions(self, height: int, width: int) -> torch.Tensor:
        """(T, 4) raw-pixel boxes (y0, x0, y1, x1) in sequence order: base tile, then grid rows with their
        newline token (which sees the union of its row)."""
        lay = self.layout(height, width)
        g, p = self.tile // self.patch, self.patch
        cells = grid_cells(g, g, (p, p))  # in a finished tile
        # base tile: finished tile -> base image (finish geometry) -> raw
        bh, bw = self.base_size
        sy, sx, oy, ox = self._tile_map(bh, bw)
        base = to_raw(to_raw(cells, (sy, sx), (-oy, -ox)), (height / bh, width / bw))
        # full anyres grid: finished tile cell -> cut tile -> canvas -> raw
        ty, tx, toy, tox = self._tile_map(self.cut, self.cut)
        gh, gw = lay.tiles[0] * g, lay.tiles[1] * g
        r = torch.arange(gh, dtype=torch.float64)
        c = torch.arange(gw, dtype=torch.float64)
        y0 = (r // g) * self.cut + ((r % g) * p + toy) * ty
        y1 = (r // g) * self.cut + ((r % g + 1) * p + toy) * ty
        x0 = (c // g) * self.cut + ((c % g) * p + tox) * tx
        x1 = (c // g) * self.cut + ((c % g + 1) * p + tox) * tx
        scale = (height / lay.fitted[0], width / lay.fitted[1])
        top, left = lay.offset
        rows = []
        for row in range(*lay.rows):
            cols = torch.arange(*lay.cols)
            boxes = torch.stack([y0[row].expand(len(cols)), x0[cols], y1[row].expand(len(cols)), x1[cols]], dim=1)
            boxes = safe_boxes(to_raw(boxes, scale, (top, left)), height, width).double()
            rows += [boxes, union_box(boxes)[None]]  # the row's cells, then its newline token
        return safe_boxes(torch.cat([base] + rows), height, width)
