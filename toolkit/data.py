"""Data layer: VQA samples, datasets, loaders for LLaVA-style JSON and JSONL.

Images are held as uint8 arrays (H, W, 3) in memory; every loader validates
what it reads and raises :class:`DataError` naming the file and the field.
With ``lazy=True`` the loaders keep only each image's path (:class:`ImageFile`
in a :class:`LazyVQASample`) and decode the file on every access of
``sample.image``, so a dataset's memory does not grow with its images; a bad
image then raises the same :class:`DataError` on access instead of at load.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "DataError", "VQASample", "VQADataset", "load_image", "check_image", "load_llava_json",
    "load_jsonl", "load_dataset", "images_to_tensor", "tensor_to_images", "SOURCE_RECORD",
    "ImageFile", "LazyVQASample",
]

PathLike = Union[str, os.PathLike]

#: ``sample.meta`` key of a LLaVA record as loaded (image path, conversation, turn indices); it holds the
#: original question, so releases never write it as it is
SOURCE_RECORD = "source_record"


class DataError(ValueError):
    """A dataset file, record or image is invalid (message names the file and field)."""


def check_image(image: Any, where: str) -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 (H, W, 3) array or raise :class:`DataError`.

    Accepts uint8 arrays (H, W, 3) / (H, W) and float arrays in [0, 1]; floats must be finite.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: image must be (H, W, 3), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: image has non-finite values")
        if arr.min() < 0 or arr.max() > 1:
            raise DataError(f"{where}: float image must be in [0, 1], got [{arr.min()}, {arr.max()}]")
        return np.ascontiguousarray(np.round(arr * 255).astype(np.uint8))
    raise DataError(f"{where}: image dtype must be uint8 or float, got {arr.dtype}")


@dataclass(frozen=True)
class VQASample:
    """One image-question-answer example.

    Attributes:
        id: unique string id.
        image: uint8 array (H, W, 3), RGB.
        question: the user's question text (no image placeholder).
        answer: the reference answer text.
        choices: options for multiple choice, or None.
        meta: free-form extra fields (kept through protection and release).
    """

    id: str
    image: np.ndarray = field(repr=False)
    question: str
    answer: str
    choices: Optional[Tuple[str, ...]] = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"sample {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"{where}: id must be a non-empty string")
        self._check_image(where)
        for name in ("question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: {name} must be a non-empty string, got {value!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))

    def _check_image(self, where: str) -> None:
        object.__setattr__(self, "image", check_image(self.image, where))

    def with_(self, **changes: Any) -> "VQASample":
        """A copy with some fields replaced (samples are immutable)."""
        return replace(self, **changes)


class ImageFile:
    """An image file decoded on every :meth:`load` (nothing is cached), for :class:`LazyVQASample`.

    Args:
        path: the image file (resolved by the loader).
        where: the record it belongs to, named in a :class:`DataError` for an image of the wrong shape or
            type (an unreadable file's error names the file itself, as :func:`load_image` does).
    """

    __slots__ = ("path", "where")

    def __init__(self, path: PathLike, where: str) -> None:
        self.path, self.where = Path(path), where

    def load(self) -> np.ndarray:
        """Decode the file as a C-contiguous uint8 (H, W, 3) array; raises :class:`DataError` when it is bad."""
        return check_image(load_image(self.path), self.where)

    def __repr__(self) -> str:
        return f"ImageFile({str(self.path)!r})"


class LazyVQASample(VQASample):
    """A :class:`VQASample` whose image is an :class:`ImageFile` decoded on every access of ``image``.

    Memory holds the path and the text only; each ``sample.image`` reads the file again (a fresh
    array), and a bad file raises :class:`DataError` there. :meth:`with_` keeps the image lazy unless it
    replaces it, in which case it returns a plain (in-memory) :class:`VQASample`. Built by the loaders
    with ``lazy=True``; constructing one with an array instead of an :class:`ImageFile` holds the array.
    """

    @property  # type: ignore[override]
    def image(self) -> np.ndarray:
        """The decoded uint8 (H, W, 3) image (read from the file on every access)."""
        src = self.__dict__["_image"]
        return src.load() if isinstance(src, ImageFile) else src

    @image.setter
    def image(self, value: Any) -> None:
        self.__dict__["_image"] = value

    @property
    def image_source(self) -> Any:
        """The :class:`ImageFile` (or an array for an eager image) without decoding it."""
        return self.__dict__["_image"]

    def _check_image(self, where: str) -> None:
        if not isinstance(self.__dict__["_image"], ImageFile):
            super()._check_image(where)

    def with_(self, **changes: Any) -> VQASample:
        """A copy with some fields replaced: still lazy, or a plain :class:`VQASample` when ``image`` is given."""
        if "image" in changes:
            values = {f.name: getattr(self, f.name) for f in fields(VQASample) if f.name != "image"}
            return VQASample(**{**values, **changes})
        return replace(self, image=self.__dict__["_image"], **changes)


class VQADataset(Sequence[VQASample]):
    """An ordered, immutable collection of :class:`VQASample` with a name and a source folder.

    Args:
        samples: the samples (ids must be unique).
        name: a label used in reports and manifests.
        root: the folder the data came from (used to refuse overwriting it), or None.
    """

    def __init__(self, samples: Iterable[VQASample], name: str = "dataset",
                 root: Optional[PathLike] = None) -> None:
        self._samples: Tuple[VQASample, ...] = tuple(samples)
        self.name = name
        self.root = Path(root).resolve() if root is not None else None
        seen = set()
        for s in self._samples:
            if not isinstance(s, VQASample):
                raise DataError(f"{name}: items must be VQASample, got {type(s).__name__}")
            if s.id in seen:
                raise DataError(f"{name}: duplicate sample id {s.id!r}")
            seen.add(s.id)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return VQADataset(self._samples[index], self.name, self.root)
        return self._samples[index]

    def __iter__(self) -> Iterator[VQASample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return f"VQADataset({self.name!r}, n={len(self)})"

    def replace_samples(self, samples: Iterable[VQASample], name: Optional[str] = None) -> "VQADataset":
        """A dataset with the same root and new samples."""
        return VQADataset(samples, name or self.name, self.root)

    @property
    def answers(self) -> List[str]:
        """Sorted distinct answers (the classes of a closed-vocabulary task)."""
        return sorted({s.answer for s in self._samples})

    def require_nonempty(self) -> "VQADataset":
        """Raise :class:`DataError` if the dataset is empty; return self."""
        if len(self) == 0:
            raise DataError(f"{self.name}: dataset is empty")
        return self


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack same-size uint8 (H, W, 3) images into a float (N, 3, H, W) tensor in [0, 1]."""
    arr = np.stack([np.asarray(im) for im in images])  # a fresh, writable copy
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(x: torch.Tensor) -> List[np.ndarray]:
    """Round a (N, 3, H, W) tensor in [0, 1] to a list of uint8 (H, W, 3) arrays."""
    arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]


def _resolve_inside(root: Path, relative: str, where: str) -> Path:
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{where}: 'image' must be a non-empty relative path, got {relative!r}")
    if os.path.isabs(relative):
        raise DataError(f"{where}: image path {relative!r} must be relative to {root}")
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise DataError(f"{where}: image path {relative!r} escapes the dataset folder {root}")
    return target


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file fully as uint8 RGB (H, W, 3); truncated or unreadable files raise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels
        raise DataError(f"{path}: image too large to load safely ({exc.args[0].split(',')[0]})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing or empty {key!r} (got {value!r})")
    return value


def _choices(record: Mapping[str, Any], where: str) -> Optional[Tuple[str, ...]]:
    choices = record.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of strings")
    return tuple(choices)


def load_jsonl(path: PathLike, name: Optional[str] = None, lazy: bool = False) -> VQADataset:
    """Load JSONL records ``{"id", "image", "question", "answer", "choices"?}``.

    ``image`` is a path relative to the file's folder and may not escape it.
    Extra keys are kept in ``meta``. ``lazy``: keep only the image paths (:class:`LazyVQASample`), decoded
    on every access; a bad image raises the same :class:`DataError` then instead of now.
    """
    path = Path(path).resolve()
    root = path.parent
    samples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{where}: record must be an object")
        sid = str(rec.get("id", lineno))
        image_path = _resolve_inside(root, rec.get("image"), f"{where} field 'image'")
        meta = {k: v for k, v in rec.items() if k not in {"id", "image", "question", "answer", "choices"}}
        if lazy:
            samples.append(LazyVQASample(sid, ImageFile(image_path, where), _text(rec, "question", where),
                                         _text(rec, "answer", where), _choices(rec, where), meta))
            continue
        image = load_image(image_path)
        samples.append(VQASample(sid, check_image(image, where), _text(rec, "question", where),
                                 _text(rec, "answer", where), _choices(rec, where), meta))
    if not samples:
        raise DataError(f"{path}: no records (the dataset is empty)")
    return VQADataset(samples, name or path.stem, root)


def load_llava_json(path: PathLike, image_folder: Optional[PathLike] = None,
                    name: Optional[str] = None, lazy: bool = False) -> VQADataset:
    """Load LLaVA-style JSON: a list of ``{"id", "image", "conversations": [...]}``.

    The first human turn (``<image>`` placeholder removed) is the question and the
    following gpt turn the answer. Image paths are relative to ``image_folder``
    (default: the JSON file's folder) and may not escape it. Each sample keeps the
    record's image path and whole conversation in ``meta[SOURCE_RECORD]``, so a
    LLaVA-layout release (:func:`toolkit.release.write_release` with ``layout="llava"``)
    can give the record back with only the protected question changed. ``lazy``: keep only the image
    paths (:class:`LazyVQASample`), decoded on every access; a bad image raises the same
    :class:`DataError` then instead of now.
    """
    path = Path(path).resolve()
    root = Path(image_folder).resolve() if image_folder is not None else path.parent
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: top level must be a list of records")
    samples = []
    for i, rec in enumerate(records):
        where = f"{path} record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: record must be an object")
        sid = str(rec.get("id", i))
        where = f"{path} record {i} (id {sid!r})"
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: missing 'conversations'")
        human = next((t for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
        if human is None:
            raise DataError(f"{where}: no human turn in 'conversations'")
        h_index = conv.index(human)
        gpt = next((t for t in conv[h_index + 1:] if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if gpt is None:
            raise DataError(f"{where}: missing answer (no gpt turn after the question)")
        question = _text(human, "value", where + " human turn").replace("<image>", "").strip()
        answer = _text(gpt, "value", where + " gpt turn").strip()
        if not question:
            raise DataError(f"{where}: question is empty once '<image>' is removed")
        image_path = _resolve_inside(root, rec.get("image"), f"{where} field 'image'")
        image = ImageFile(image_path, f"sample {sid!r}") if lazy else load_image(image_path)
        meta = {k: v for k, v in rec.items() if k not in {"id", "image", "conversations", "choices"}}
        meta[SOURCE_RECORD] = {"image": rec["image"], "conversations": conv, "turn": h_index,
                               "answer_turn": conv.index(gpt, h_index + 1)}
        samples.append((LazyVQASample if lazy else VQASample)(sid, image, question, answer, _choices(rec, where), meta))
    if not samples:
        raise DataError(f"{path}: no records (the dataset is empty)")
    return VQADataset(samples, name or path.stem, root)


def load_dataset(path: PathLike, **kwargs: Any) -> VQADataset:
    """Load ``.jsonl`` with :func:`load_jsonl`, ``.json`` with :func:`load_llava_json` (``kwargs`` go to it,
    e.g. ``lazy=True`` to decode images on access instead of holding them)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: dataset file not found")
    if p.suffix == ".jsonl":
        return load_jsonl(p, **kwargs)
    if p.suffix == ".json":
        return load_llava_json(p, **kwargs)
    raise DataError(f"{p}: unknown dataset format (expected .json LLaVA-style or .jsonl)")
