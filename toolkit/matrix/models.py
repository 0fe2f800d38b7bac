"""Models of a matrix: where each named model's folder is, its content identity, loading, threat models."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..surrogates import load_surrogate, model_type_of
from ..surrogates.tiny import build_tiny
from ..surrogates.tiny.other import build_tiny_other, other_tiny_families
from ..zoo import ZOO, recipe_hash, zoo_folder
from .cache import content_hash, exclusive_lock
from .spec import MatrixSpec

__all__ = ["ModelStore", "threat_model"]


def threat_model(victim: str, surrogates: Sequence[str], families: Dict[str, str],
                 identities: Optional[Dict[str, Any]] = None) -> str:
    """"white-box" (victim among the surrogates, or the same weights under another name when ``identities``
    maps model names to their content identity), "gray-box" (same family) or "black-box"."""
    if not surrogates:
        return "-"
    if victim in surrogates or (identities and any(identities[victim] == identities[s] for s in surrogates)):
        return "white-box"
    if families[victim] in {families[s] for s in surrogates}:
        return "gray-box"
    return "black-box"


class ModelStore:
    """The spec's ``models``: tiny random builds (cached under ``out/models``), zoo models or local folders.

    Args:
        spec: the matrix spec.
        out: the run folder (tiny builds live in ``out/models``).
        device, dtype: how :meth:`load` places the weights.
        progress: show progress bars (a zoo build on demand).
    """

    def __init__(self, spec: MatrixSpec, out: Path, device: str = "cpu", dtype: str = "float32",
                 progress: bool = False) -> None:
        self.spec, self.out, self.device, self.dtype, self.progress = spec, out, device, dtype, progress
        self.folders: Dict[str, Path] = {}
        #: model name -> family (filled by :meth:`folder`)
        self.families: Dict[str, str] = {}

    def folder(self, name: str) -> Path:
        """The ``save_pretrained`` folder of model ``name`` (built or located once)."""
        if name in self.folders:
            return self.folders[name]
        m = self.spec.models[name]
        if "path" in m or "zoo" in m:
            folder = zoo_folder(m["zoo"], progress=self.progress) if "zoo" in m else Path(m["path"]).expanduser()
            self.families[name] = model_type_of(folder)
        else:
            family, seed = m["tiny"], int(m.get("seed", 0))
            folder = self.out / "models" / f"{family}-{seed}-{content_hash(m)}"
            if not (folder / "done").is_file():
                lock = self.out / "models" / ".locks" / f"{folder.name}.lock"
                lock.parent.mkdir(parents=True, exist_ok=True)
                with exclusive_lock(lock):  # sharded workers share the folder: one builds, the others wait
                    if not (folder / "done").is_file():
                        tmp = folder.with_name(folder.name + ".tmp")
                        shutil.rmtree(tmp, ignore_errors=True)
                        kwargs = {k: v for k, v in m.items() if k not in {"tiny", "seed"}}
                        builder = build_tiny_other if family in other_tiny_families() else build_tiny
                        builder(family, tmp, seed=seed, **kwargs)
                        (tmp / "done").write_text("")
                        shutil.rmtree(folder, ignore_errors=True)
                        os.replace(tmp, folder)
            self.families[name] = family
        self.folders[name] = folder
        return folder

    def identity(self, name: str) -> Dict[str, Any]:
        """What the model's weights are, for cache keys: its tiny config, zoo recipe hash, or folder listing."""
        m = self.spec.models[name]
        if "tiny" in m:
            return {"tiny": m}
        if "zoo" in m:
            return {"zoo": m["zoo"], "recipe": recipe_hash(ZOO[m["zoo"]])}
        folder = self.folder(name)
        config = folder / "config.json"
        files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
        return {"path": str(folder), "config": config.read_text() if config.is_file() else None, "files": files}

    def load(self, name: str, folder: Optional[Path] = None):
        """A fresh surrogate of model ``name`` (from ``folder`` instead when given: a pretrained copy)."""
        extra = {"prompt_template": self.spec.models[name]["prompt_template"]} \
            if "prompt_template" in self.spec.models[name] else {}
        return load_surrogate(folder or self.folder(name), device=self.device, dtype=self.dtype, **extra)
