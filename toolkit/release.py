"""Writing and reading protected releases.

Two layouts, each with ``manifest.json`` (defense, config, surrogates, budget,
seed, package versions, sha256 of every file):

- ``mmguard`` (default): ``images/<n>.png`` and ``data.jsonl`` (one record per
  sample: id, image, question, answer, choices, meta, including the trigger's
  words and span). The toolkit's own format, for evaluation: it tells which
  words were inserted, so it is the owner's copy, not the one to publish.
- ``llava``: a drop-in LLaVA dataset to publish: ``data.json`` (a list of
  ``{"id", "image", "conversations", ...}``) and the images under their source
  relative paths (PNG where the source was lossy or not a file: ``.jpg`` becomes
  ``.png``). A LLaVA-JSON source keeps its records: every key and every turn as
  it was, with only the protected question changed in the first human turn
  (``<image>`` where it was). Nothing in it names the trigger.

A release is written to a temporary folder beside the target and moved into
place at the end, so a failed write leaves nothing half-done.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .data import SOURCE_RECORD, DataError, VQADataset, load_jsonl, load_llava_json

__all__ = ["write_release", "read_release", "verify_release", "inserted_words", "check_release_target", "package_versions", "sha256_file",
           "ReleaseError", "LAYOUTS"]

#: release layouts (see the module docstring)
LAYOUTS = ("mmguard", "llava")
#: image suffixes written as they are (lossless); anything else becomes .png
_LOSSLESS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}

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


def _mmguard_records(dataset: VQADataset, tmp: Path) -> None:
    """``images/<n>.png`` and ``data.jsonl`` (the toolkit's layout)."""
    from PIL import Image

    width = max(6, len(str(len(dataset))))
    with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
        for i, s in enumerate(dataset):
            rel = f"images/{i:0{width}d}.png"
            (tmp / "images").mkdir(exist_ok=True)
            Image.fromarray(s.image).save(tmp / rel, format="PNG", optimize=False)
            rec: Dict[str, Any] = {"id": s.id, "image": rel, "question": s.question, "answer": s.answer}
            if s.choices is not None:
                rec["choices"] = list(s.choices)
            rec.update({k: v for k, v in dict(s.meta).items() if k not in rec and k != SOURCE_RECORD})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _release_name(source_rel: Optional[str], index: int, width: int, taken: set) -> str:
    """Relative file name of one image in a LLaVA-layout release (lossless suffixes kept, else .png; unique)."""
    if source_rel is None:
        base = Path("images") / f"{index:0{width}d}.png"
    else:
        base = Path(source_rel)
        if base.suffix.lower() not in _LOSSLESS:
            base = base.with_suffix(".png")
    name, k = base.as_posix(), 1
    while name.lower() in taken or name in ("data.json", "manifest.json"):
        name = base.with_name(f"{base.stem}-{k}{base.suffix}").as_posix()
        k += 1
    taken.add(name.lower())
    return name


def _protected_turn(value: str, source_question: str, question: str) -> str:
    """The human turn ``value`` with the source question replaced by the released one (``<image>`` kept)."""
    if question == source_question:
        return value
    if value.count(source_question) == 1:
        return value.replace(source_question, question)
    return "<image>\n" + question if "<image>" in value else question


def _llava_records(dataset: VQADataset, tmp: Path) -> None:
    """``data.json`` and the images under their source names (the drop-in LLaVA layout)."""
    from PIL import Image

    records, taken = [], set()
    width = max(6, len(str(len(dataset))))
    for i, s in enumerate(dataset):
        src = dict(s.meta).get(SOURCE_RECORD)
        rel = _release_name(src["image"] if src else None, i, width, taken)
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).save(target, format=_LOSSLESS.get(target.suffix.lower(), "PNG"))
        extra = {k: v for k, v in dict(s.meta).items() if k not in (SOURCE_RECORD, "trigger")}
        if src:
            conv = [dict(turn) for turn in src["conversations"]]
            human = conv[src["turn"]]
            source_question = str(human["value"]).replace("<image>", "").strip()
            human["value"] = _protected_turn(str(human["value"]), source_question, s.question)
        else:
            conv = [{"from": "human", "value": "<image>\n" + s.question}, {"from": "gpt", "value": s.answer}]
        rec: Dict[str, Any] = {"id": s.id, "image": rel, "conversations": conv}
        if s.choices is not None:
            rec["choices"] = list(s.choices)
        rec.update({k: v for k, v in extra.items() if k not in rec})
        records.append(rec)
    (tmp / "data.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")


def write_release(protection, out: PathLike, overwrite: bool = False,
                  extra: Optional[Dict[str, Any]] = None, layout: str = "mmguard") -> Path:
    """Write a :class:`~toolkit.defenses.Protection` as a release folder; returns its path.

    Args:
        layout: ``"mmguard"`` (images/ + data.jsonl with trigger annotations; the owner's copy) or
            ``"llava"`` (data.json in LLaVA's layout under the source's file names; the copy to publish).

    Refuses to write into (or above) the source dataset's folder, and into a
    non-empty folder unless ``overwrite`` is set.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = check_release_target(out, protection.source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # what a killed writer of this release left behind
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (_llava_records if layout == "llava" else _mmguard_records)(protection.dataset, tmp)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": "mmguard-release/1",
            "layout": layout,
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
    """Load a release folder (either layout) as a dataset, checking every file's sha256 against the manifest."""
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
    name = f"release:{manifest.get('defense')}"
    if manifest.get("layout", "mmguard") == "llava":
        return load_llava_json(path / "data.json", name=name)
    return load_jsonl(path / "data.jsonl", name=name)


def inserted_words(source: Sequence[str], released: Sequence[str]) -> Optional[List[str]]:
    """The words inserted as one block into ``source`` to give ``released``, or None when it is not such an
    insertion (words changed, removed or inserted in two places)."""
    if len(released) < len(source):
        return None
    prefix = 0
    while prefix < len(source) and source[prefix] == released[prefix]:
        prefix += 1
    suffix = 0
    while suffix < len(source) - prefix and source[-1 - suffix] == released[-1 - suffix]:
        suffix += 1
    if prefix + suffix != len(source):
        return None
    return list(released[prefix:len(released) - suffix])


def verify_release(release: PathLike, source: PathLike) -> Dict[str, Any]:
    """Check a release folder against the owner's source data; raise :class:`ReleaseError` at the first failure.

    Checks: every file's sha256 against the manifest; the same sample ids as the source; each image
    re-read from its PNG has the source's size and differs from it by at most ``eps_levels`` grey
    levels (the manifest's L_inf budget, 8/255 -> 8); each answer is the source's; each question is the
    source's with at most ``max_trigger_tokens`` words (the defense config; 0 without triggers) inserted
    as one block. Returns a summary: samples, the largest change in grey levels, questions with a trigger
    and the longest trigger.
    """
    import numpy as np

    from .data import load_dataset

    release = Path(release)
    released = read_release(release)  # sha256 of every file
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    levels = manifest.get("eps_levels")
    if not isinstance(levels, int):
        raise ReleaseError(f"{release}/manifest.json: no integer eps_levels")
    max_words = int((manifest.get("config") or {}).get("max_trigger_tokens") or 0)
    src = {s.id: s for s in load_dataset(source)}
    ids = [s.id for s in released]
    if set(ids) != set(src) or len(ids) != len(src):
        missing, extra = sorted(set(src) - set(ids))[:3], sorted(set(ids) - set(src))[:3]
        raise ReleaseError(f"{release}: sample ids differ from the source (missing {missing}, unknown {extra})")
    largest, triggered, longest = 0, 0, 0
    for s in released:
        o = src[s.id]
        if s.image.shape != o.image.shape:
            raise ReleaseError(f"{release}: sample {s.id!r}: image {s.image.shape} but the source is {o.image.shape}")
        change = int(np.abs(s.image.astype(np.int16) - o.image.astype(np.int16)).max())
        if change > levels:
            raise ReleaseError(f"{release}: sample {s.id!r}: a pixel changed by {change} grey levels, over the "
                               f"budget of {levels} ({levels}/255)")
        largest = max(largest, change)
        if s.answer != o.answer:
            raise ReleaseError(f"{release}: sample {s.id!r}: answer {s.answer!r} differs from the source's {o.answer!r}")
        words = inserted_words(o.question.split(), s.question.split())
        if words is None or len(words) > max_words:
            raise ReleaseError(f"{release}: sample {s.id!r}: question {s.question!r} is not the source's "
                               f"{o.question!r} with at most {max_words} words inserted")
        if words:
            triggered += 1
            longest = max(longest, len(words))
    return {"samples": len(released), "max_change_levels": largest, "eps_levels": levels,
            "questions_with_trigger": triggered, "longest_trigger": longest}
