"""Writing and reading protected releases.

A release folder holds ``images/<n>.png`` (lossless), ``data.jsonl`` (one record
per sample: id, image, question, answer, choices, meta) and ``manifest.json``
(defense, config, surrogates, budget, seed, package versions, sha256 of every
file). It is written to a temporary folder beside the target and moved into
place at the end, so a failed write leaves nothing half-done.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .data import DataError, VQADataset, load_jsonl

__all__ = ["write_release", "read_release", "check_release_target", "package_versions", "sha256_file", "ReleaseError"]

PathLike = Union[str, os.PathLike]
_PACKAGES = ("torch", "torchvision", "transformers", "peft", "timm", "open_clip_torch", "numpy", "Pillow",
             "scikit-image", "mmguard-toolkit")


class ReleaseError(RuntimeError):
    """The release cannot be written (target not allowed) or fails verification."""


def package_versions() -> Dict[str, Optional[str]]:
    """Installed versions of the packages that shape a result."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_release_target(out: PathLike, dataset: VQADataset, overwrite: bool = False) -> Path:
    """Raise :class:`ReleaseError` if ``out`` may not receive a release of ``dataset``; returns it resolved.

    Refused: the source data folder, a folder inside it or above it, and a
    non-empty folder unless ``overwrite``. Call it before expensive work.
    """
    out = Path(out).resolve()
    root = dataset.root
    if root is not None and (out == root or root in out.parents or out in root.parents):
        raise ReleaseError(f"refusing to write the release into or over the source data folder {root}")
    if out.exists():
        if not out.is_dir():
            raise ReleaseError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ReleaseError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
    return out


def write_release(protection, out: PathLike, overwrite: bool = False,
                  extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a :class:`~toolkit.defenses.Protection` as a release folder; returns its path.

    Refuses to write into (or above) the source dataset's folder, and into a
    non-empty folder unless ``overwrite`` is set.
    """
    from PIL import Image

    out = check_release_target(out, protection.source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        records = []
        width = max(6, len(str(len(protection.dataset))))
        for i, s in enumerate(protection.dataset):
            rel = f"images/{i:0{width}d}.png"
            Image.fromarray(s.image).save(tmp / rel, format="PNG", optimize=False)
            rec: Dict[str, Any] = {"id": s.id, "image": rel, "question": s.question, "answer": s.answer}
            if s.choices is not None:
                rec["choices"] = list(s.choices)
            rec.update({k: v for k, v in dict(s.meta).items() if k not in rec})
            records.append(rec)
        with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": "mmguard-release/1",
            "defense": protection.defense,
            "config": protection.config,
            "surrogates": protection.surrogates,
            "eps": protection.config.get("eps"),
            "eps_levels": int(round(protection.config.get("eps", 0) * 255)),
            "seed": protection.config.get("seed"),
            "seconds": protection.seconds,
            "source": {"name": protection.source.name,
                       "root": str(protection.source.root) if protection.source.root else None,
                       "samples": len(protection.source)},
            "versions": package_versions(),
            "files": files,
        }
        if extra:
            manifest["extra"] = extra
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_release(path: PathLike, verify: bool = True) -> VQADataset:
    """Load a release folder as a dataset, checking every file's sha256 against the manifest."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise DataError(f"{path}: not a release folder (no manifest.json)")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if verify:
        for rel, digest in manifest.get("files", {}).items():
            target = path / rel
            if not target.is_file() or sha256_file(target) != digest:
                raise ReleaseError(f"{target}: missing or modified (sha256 mismatch with manifest)")
    return load_jsonl(path / "data.jsonl", name=f"release:{manifest.get('defense')}")
