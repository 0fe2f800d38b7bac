"""The demo: the packaged mini matrix (``toolkit/specs/demo.yaml``) on the procedural testbed.

The ``scenes`` VQA task (six question types, paraphrased questions) and two
pretrained zoo models: the owner protects the training split against the
surrogate ``llava-a`` with EMN, MEM and MMGuard (text-only, multimodal, BPH,
CRS); the attacker applies no countermeasure, JPEG-10 or the n-gram trigger
filter and LoRA-tunes ``llava-d`` (same family, other weights: gray-box) on the
release; efficacy is the victim's accuracy on the CLEAN test split, beside the
zero-shot and clean rows. Everything runs on CPU from the shipped zoo weights;
nothing is downloaded. The run is a normal matrix run: cached, resumable, with
``rows.jsonl``, ``results.md``, ``results.csv`` and a heatmap in the output
folder. The former digits demo is ``benchmarks/specs/digits_demo.yaml``.
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
    if limit:  # a small slice: n_train = limit (a fifth of it the attacker's clean data), n_test = limit / 3
        limit = int(limit)
        if limit < 10:
            raise ValueError(f"limit must be >= 10 samples, got {limit}")
        spec["data"].update(n_train=limit, n_test=max(limit // 3, 5),
                            attacker_clean=min(spec["data"].get("attacker_clean", 0), limit // 5))
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
