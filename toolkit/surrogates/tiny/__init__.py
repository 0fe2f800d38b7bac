"""Tiny random-initialised models built offline, for tests, CPU benchmarks and the demo.

They use the same transformers classes as the real checkpoints and are saved
with ``save_pretrained`` (model + processor), so every code path that loads a
user's local checkpoint is exercised. Nothing is downloaded.

Each family registers a builder in :data:`TINY_BUILDERS` (key = the
surrogate's registry name / ``model_type``); :func:`build_tiny` dispatches.
Every module in this package is imported on first use, so a new family only
adds a file here.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Any, Union

from .common import TINY_BUILDERS, LLAVA_CHAT_TEMPLATE, train_tiny_tokenizer

__all__ = ["TINY_BUILDERS", "build_tiny", "build_tiny_llava", "train_tiny_tokenizer", "LLAVA_CHAT_TEMPLATE",
           "tiny_families"]


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

from .llava import build_tiny_llava  # noqa: E402  (re-export of the original entry point)


def tiny_families() -> list:
    """Names of every family with a tiny builder (sorted)."""
    return sorted(TINY_BUILDERS)


def build_tiny(family: str, path: Union[str, os.PathLike], **kwargs: Any) -> Path:
    """Build and save the tiny model of ``family`` at ``path``; returns the folder."""
    if family not in TINY_BUILDERS:
        raise KeyError(f"no tiny builder for {family!r}; available: {', '.join(tiny_families())}")
    return TINY_BUILDERS[family](path, **kwargs)
