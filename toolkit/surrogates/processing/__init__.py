"""Differentiable copies of image processors: the one home of the surrogates' pixel pipelines.

A perturbation lives in raw pixel space, so every surrogate maps pixels in
[0, 1] to its model's inputs with torch operations that repeat the real
processor's steps (resize on uint8 levels, crop, rescale, normalise) and let
gradients through. Modules, by what they hold:

* :mod:`.settings`: the one settings reader (:func:`normalisation_settings`), the
  rescale / normalise step, and the resample reader (:func:`resample_name`) with
  each consumer's map to torch modes (:class:`ResampleModes`);
* :mod:`.rounding`: straight-through roundings;
* :mod:`.pil`: PIL-style resize and the CLIP-style processor;
* :mod:`.torchvision`: torchvision-backend resize and the fixed-size processor;
* :mod:`.torchvision_eval`: open_clip / timm (torchvision) evaluation transforms;
* :mod:`.tiles`: tile-layout arithmetic of the tiling families and the fixed-point (bit-exact) resize;
* :mod:`.token_regions`: which raw pixels each image token sees.
"""
from __future__ import annotations

from .pil import DifferentiableClipProcessor, resize_like_pil, shortest_edge_size
from .rounding import round_half_up_ste, round_ste
from .settings import (LENIENT_MODES, RESAMPLE_NAMES, TILING_MODES, TORCHVISION_MODES, PixelSettings, ResampleModes,
                       normalisation_settings, resample_name, rescale_normalize)
from .tiles import (fit_within, fixed_point_resize, longest_edge_size, multiple_of_tile_size, optimal_tiled_canvas,
                    resampling_matrix, resize_uint8, select_best_resolution)
from .token_regions import grid_cells, grid_regions, region_means, safe_boxes, to_raw, union_box
from .torchvision import DifferentiableFixedSizeProcessor, native_uint8_resize, resize_like_torchvision
from .torchvision_eval import DifferentiableEvalTransform, center_crop_or_pad

__all__ = [
    # settings
    "normalisation_settings", "rescale_normalize", "PixelSettings", "RESAMPLE_NAMES", "resample_name", "ResampleModes",
    "LENIENT_MODES", "TORCHVISION_MODES", "TILING_MODES",
    # rounding
    "round_ste", "round_half_up_ste",
    # PIL-style
    "resize_like_pil", "shortest_edge_size", "DifferentiableClipProcessor",
    # torchvision backend
    "native_uint8_resize", "resize_like_torchvision", "DifferentiableFixedSizeProcessor",
    # eval transforms
    "DifferentiableEvalTransform", "center_crop_or_pad",
    # tiling families
    "resize_uint8", "fixed_point_resize", "resampling_matrix", "select_best_resolution", "fit_within",
    "optimal_tiled_canvas", "longest_edge_size", "multiple_of_tile_size",
    # token regions
    "grid_regions", "region_means", "grid_cells", "to_raw", "safe_boxes", "union_box",
]
