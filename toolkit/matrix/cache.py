"""The matrix runner's content-addressed, atomically written store of stage outputs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

__all__ = ["StageCache", "content_hash"]


def content_hash(*parts: Any) -> str:
    """16-hex-digit key of JSON-able ``parts`` (dict keys sorted; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """Stage outputs under ``root/STAGE/KEY/`` with a ``done.json`` written last; a killed run leaves only
    ``.tmp`` folders, which the next run discards."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, stage: str, key: str) -> Path:
        """The folder of one stage output."""
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """Whether the output exists and finished."""
        return (self.path(stage, key) / "done.json").is_file()

    def meta(self, stage: str, key: str) -> Dict[str, Any]:
        """The ``done.json`` of a finished output."""
        return json.loads((self.path(stage, key) / "done.json").read_text())

    def commit(self, stage: str, key: str, build: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
        """Run ``build(tmp_folder) -> meta`` into a temporary folder and move it into place."""
        final = self.path(stage, key)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = build(tmp)
        (tmp / "done.json").write_text(json.dumps(meta, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return meta
