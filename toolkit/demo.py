"""The demo: the packaged mini matrix (``toolkit/specs/demo.yaml``) on the embedded digits data.

clean / random noise / EMN class-wise / EMN sample-wise, each without and with
JPEG-10 -> unauthorized full fine-tune of a fresh tiny LLaVA victim -> accuracy
on the CLEAN test split. Surrogate and victim have different random
initialisations (gray-box). Everything runs on CPU; nothing is downloaded. The
run is a normal matrix run: cached, resumable, with ``rows.jsonl``,
``results.md``, ``results.csv`` and a heatmap in the output folder.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .matrix import run_matrix

__all__ = ["run_demo", "demo_spec", "DEMO_DEFENSES"]


def demo_spec(epochs: Optional[int] = None, seed: Optional[int] = None, limit: int = 0,
              defenses: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The packaged demo spec as a dict, with optional overrides (``defenses``: labels to keep)."""
    spec = yaml.safe_load(resources.files("toolkit.specs").joinpath("demo.yaml").read_text())
    if epochs is not None:
        spec["finetune"]["epochs"] = int(epochs)
    if seed is not None:
        spec["seeds"] = [int(seed)]
    if limit:
        spec["data"]["limit"] = int(limit)
    if defenses is not None:
        unknown = set(defenses) - {"clean"} - {d["label"] for d in spec["defenses"]}
        if unknown:
            raise ValueError(f"unknown demo defense labels {sorted(unknown)}; "
                             f"known: {['clean'] + [d['label'] for d in spec['defenses']]}")
        spec["defenses"] = [d for d in spec["defenses"] if d["label"] in defenses]
    return spec


#: (label, registry name, config) of the demo's defenses, read from the packaged spec.
DEMO_DEFENSES = [(d["label"], d["name"], dict(d.get("config") or {})) for d in demo_spec()["defenses"]]


def run_demo(out: Path, *, epochs: Optional[int] = None, seed: Optional[int] = None, limit: int = 0,
             progress: bool = True, defenses: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run (or resume) the demo matrix into ``out``; returns the rows."""
    return run_matrix(demo_spec(epochs, seed, limit, defenses), Path(out), progress=progress)
