"""Tiny random-init timm classifier (a small ViT by default), saved in timm's ``save_for_hf`` layout."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ...digits import DIGIT_WORDS
from .other import register_tiny_other

__all__ = ["build_tiny_timm"]

#: keyword arguments of the default tiny ViT (besides img_size / num_classes)
TINY_VIT_ARGS = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


@register_tiny_other("timm")
def build_tiny_timm(path: Union[str, os.PathLike], *, seed: int = 0, labels: Sequence[str] = DIGIT_WORDS,
                    architecture: str = "vit_tiny_patch16_224", image_size: int = 32,
                    crop_pct: Optional[float] = None, **model_kwargs: Any) -> Path:
    """Build a random-init timm classifier with one class per label and save it for
    :class:`~toolkit.surrogates.timm_classifier.TimmSurrogate`.

    Default: ``vit_tiny_patch16_224`` shrunk to ``image_size`` px input, 8 px
    patches, 2 blocks of width 64 (about 0.1 M parameters), ``len(labels)``
    classes named ``labels`` (the digit words by default). Another
    ``architecture`` (e.g. ``"resnet10t"``) gets only ``model_kwargs``. The
    preprocessing config (``input_size`` = ``image_size``, the architecture's
    mean/std/interpolation, ``crop_pct`` if given) is stored with it. Writes
    ``config.json`` and ``model.safetensors`` with ``timm.models.save_for_hf``;
    returns the folder.
    """
    import timm
    from timm.models import save_for_hf

    from .common import seeded_init

    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(s.strip().lower() for s in labels)) != len(labels):
        raise ValueError(f"need at least two distinct labels, got {labels}")
    kwargs = dict(TINY_VIT_ARGS, img_size=image_size) if architecture == "vit_tiny_patch16_224" else {}
    kwargs.update(model_kwargs)
    kwargs["num_classes"] = len(labels)
    model = seeded_init(lambda kw: timm.create_model(architecture, pretrained=False, **kw), kwargs, seed)
    data_config = {"input_size": (3, image_size, image_size)}
    if crop_pct is not None:
        data_config["crop_pct"] = float(crop_pct)
    path = Path(path)
    save_for_hf(model, str(path), model_config={"label_names": labels}, safe_serialization=True,
                data_config=data_config)
    return path
