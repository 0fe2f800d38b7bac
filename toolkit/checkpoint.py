"""Checkpoint / resume of long protection runs.

A min-min run can take hours on a real LVLM; its full state (perturbations,
triggers, adapted surrogate weights, optimiser moments, random-generator
state, history) is written atomically after every round, so an interrupted
run resumes where it stopped and ends with exactly the result an uninterrupted
run with the same seed gives. A checkpoint is tied to a fingerprint of the
defense config, the data and the surrogates; resuming with anything else is
refused instead of silently mixing runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = ["RunCheckpoint", "fingerprint", "CheckpointError", "CheckpointMismatch"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (unreadable, or it holds pickled objects beyond tensors and plain data)."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint file belongs to a different run (config, data or surrogates changed)."""


def fingerprint(config: Dict[str, Any], dataset, surrogates) -> str:
    """SHA-256 over the config, every sample (id, text, image bytes) and the surrogate descriptions."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for s in dataset:
        h.update(json.dumps([s.id, s.question, s.answer], default=str).encode())
        h.update(np.ascontiguousarray(s.image).tobytes())
    h.update(json.dumps([s.describe() for s in surrogates], sort_keys=True, default=str).encode())
    return h.hexdigest()


class RunCheckpoint:
    """One run's state file.

    Args:
        path: file to write (its folder is created); ``None`` disables checkpointing.
        key: the run's :func:`fingerprint`.
    """

    def __init__(self, path: Union[str, os.PathLike, None], key: str) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key

    @property
    def enabled(self) -> bool:
        """Whether a path was given."""
        return self.path is not None

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or None when there is none; raises :class:`CheckpointMismatch` for another run's file."""
        if self.path is None or not self.path.is_file():
            return None
        try:  # tensors and plain containers only: a pickled object's code never runs
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for foreign objects; RuntimeError / EOFError for torn files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"refusing to load {self.path}: not a checkpoint of plain tensors and data "
                                  f"({first})") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.key:
            raise CheckpointMismatch(
                f"{self.path} was written by a different run (config, data or surrogates differ); "
                f"delete it or pass another checkpoint path")
        return state

    def save(self, state: Dict[str, Any]) -> None:
        """Write ``state`` atomically (temporary file + rename)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**state, "fingerprint": self.key}, tmp)
        os.replace(tmp, self.path)
