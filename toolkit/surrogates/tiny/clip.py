"""Tiny random-init open_clip CLIP (ViT image tower + text transformer), saved in open_clip's HF layout."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from .common import seeded_init
from .other import register_tiny_other

__all__ = ["build_tiny_clip"]


@register_tiny_other("open_clip")
def build_tiny_clip(path: Union[str, os.PathLike], *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                    width: int = 64, layers: int = 2, text_width: int = 64, text_layers: int = 2,
                    context_length: int = 32, embed_dim: int = 32) -> Path:
    """Build a random-init tiny open_clip ``CLIP`` and save it for :class:`~toolkit.surrogates.clip.ClipSurrogate`.

    ViT image tower (``image_size`` px, ``patch_size`` px patches, ``width`` channels,
    ``layers`` blocks, 2 heads), text transformer (``text_width``, ``text_layers``,
    2 heads, ``context_length`` tokens, vocabulary 49408 = open_clip's
    SimpleTokenizer), joint embedding ``embed_dim``; OpenAI mean/std, bicubic,
    shortest-side resize. Writes ``open_clip_config.json`` and
    ``open_clip_model.safetensors``; returns the folder.
    """
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    from ..clip import CONFIG_NAME, WEIGHT_NAMES, build_open_clip_model

    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width, "layers": layers,
                       "head_width": width // 2},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": 2, "layers": text_layers},
    }
    preprocess_cfg = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    model = seeded_init(build_open_clip_model, model_cfg, seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHT_NAMES[0]))
    return path
