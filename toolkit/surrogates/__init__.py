"""Surrogates: models behind one pixel-space interface (see :class:`Surrogate`).

Use :func:`load_surrogate` to open a local checkpoint folder; the adapter is
chosen from the folder's ``config.json`` ``model_type`` (transformers LVLMs and
timm classifiers) or from ``open_clip_config.json`` (open_clip CLIP models).
Every module of this package is imported here, so a family adapter only adds
a file that registers itself in :data:`SURROGATES`.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import pkgutil
from pathlib import Path
from typing import Any, Union

from .base import CAPABILITIES, CapabilityError, Surrogate
from .hf_lvlm import ForwardResult, HFVisionLanguageSurrogate, LoraSettings, TokenBatch, check_prompt_template
from .registry import SURROGATES

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in {"tiny"}:
        importlib.import_module(f"{__name__}.{_info.name}")

from .ensemble import Ensemble  # noqa: E402
from .llava import LlavaSurrogate  # noqa: E402

__all__ = ["SURROGATES", "Surrogate", "CapabilityError", "CAPABILITIES", "HFVisionLanguageSurrogate",
           "LoraSettings", "TokenBatch", "check_prompt_template", "ForwardResult", "LlavaSurrogate", "Ensemble", "load_surrogate",
           "model_type_of"]

#: marker files of non-transformers layouts -> registry name
_LAYOUT_MARKERS = {"open_clip_config.json": "open_clip"}


def model_type_of(path: Union[str, os.PathLike]) -> str:
    """The registry name a local model folder maps to.

    ``open_clip_config.json`` -> ``"open_clip"``; a timm ``config.json`` (with
    ``architecture``) -> ``"timm"``; otherwise ``config.json``'s ``model_type``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for marker, name in _LAYOUT_MARKERS.items():
        if (folder / marker).is_file():
            return name
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json or open_clip_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
    if "model_type" in config:
        return str(config["model_type"])
    if "architecture" in config:
        return "timm"
    raise ValueError(f"{config_file}: no model_type (transformers) or architecture (timm) field")


def load_surrogate(path: Union[str, os.PathLike], **kwargs: Any) -> Surrogate:
    """Open a local model folder with the adapter registered for its model type.

    Keyword arguments (``device``, ``dtype``, ``gradient_checkpointing``) go to the adapter.

    Raises:
        FileNotFoundError: the folder or its config is missing.
        ValueError: the model type has no adapter (the message lists the supported ones), or a weights
            file holds pickled objects beyond tensors (never unpickled).
    """
    model_type = model_type_of(path)
    if model_type not in SURROGATES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(SURROGATES.names())}")
    try:
        return SURROGATES.create(model_type, path=Path(path), **kwargs)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met a pickled object
        raise ValueError(f"refusing to load {path}: a weights file holds pickled objects beyond tensors, which "
                         f"could run code (only safetensors or plain tensor files are loaded): "
                         f"{str(exc).strip().splitlines()[0][:120]}") from None
