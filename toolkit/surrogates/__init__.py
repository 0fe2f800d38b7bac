"""Surrogates: models behind one pixel-space interface (see :class:`Surrogate`).

Use :func:`load_surrogate` to open a local checkpoint folder; the adapter is
chosen from the folder's ``config.json`` ``model_type``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from .base import CAPABILITIES, CapabilityError, Surrogate
from .hf_lvlm import HFVisionLanguageSurrogate, LoraSettings, TokenBatch
from .llava import LlavaSurrogate
from .registry import SURROGATES

__all__ = ["SURROGATES", "Surrogate", "CapabilityError", "CAPABILITIES", "HFVisionLanguageSurrogate",
           "LoraSettings", "TokenBatch", "LlavaSurrogate", "load_surrogate"]


def load_surrogate(path: Union[str, os.PathLike], **kwargs: Any) -> Surrogate:
    """Open a local model folder with the adapter registered for its ``config.model_type``.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing.
        ValueError: the ``model_type`` has no adapter (the message lists the supported ones).
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text())["model_type"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_file}: cannot read model_type ({exc})") from None
    if model_type not in SURROGATES:
        raise ValueError(f"{folder}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(SURROGATES.names())}")
    return SURROGATES.create(model_type, path=folder, **kwargs)
