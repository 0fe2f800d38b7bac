"""The matrix runner's content-addressed, atomically written store of stage outputs."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

from ..release import sha256_file

try:  # POSIX advisory locks; elsewhere concurrent runs on one cache are not coordinated
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["StageCache", "content_hash", "exclusive_lock"]

log = logging.getLogger(__name__)

#: per-entry file listing every other file's sha256 (written before done.json)
_DIGESTS = "digests.json"


def content_hash(*parts: Any) -> str:
    """16-hex-digit key of JSON-able ``parts`` (dict keys sorted; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class StageCache:
    """Stage outputs under ``root/STAGE/KEY/`` with a ``done.json`` written last; a killed run leaves only
    ``.tmp`` folders, which the next run discards. Several processes may share one cache: an entry is
    built under a per-key lock (``root/.locks/STAGE/KEY.lock``), and a process that waited for it reuses
    what the other one built."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, stage: str, key: str) -> Path:
        """The folder of one stage output."""
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """Whether the output exists, finished and is intact. An entry whose files no longer match the
        digests recorded when it was written (a truncated or edited file, a lost file) is discarded with a
        warning, so the caller recomputes it."""
        folder = self.path(stage, key)
        if not (folder / "done.json").is_file():
            return False
        problem = self._damage(folder)
        if problem is None:
            return True
        log.warning("cache entry %s/%s is damaged (%s): recomputing it", stage, key, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return False

    @staticmethod
    def _damage(folder: Path) -> Optional[str]:
        """What is wrong with a finished entry (None: nothing; entries written before digests were recorded
        are only checked for a readable done.json)."""
        try:
            json.loads((folder / "done.json").read_text())
            listed = folder / _DIGESTS
            if not listed.is_file():
                return None
            digests = json.loads(listed.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable record: {exc}"
        for rel, digest in digests.items():
            target = folder / rel
            if not target.is_file():
                return f"{rel} is missing"
            if sha256_file(target) != digest:
                return f"{rel} changed since it was written"
        return None

    def meta(self, stage: str, key: str) -> Dict[str, Any]:
        """The ``done.json`` of a finished output."""
        return json.loads((self.path(stage, key) / "done.json").read_text())

    def commit(self, stage: str, key: str, build: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
        """Run ``build(tmp_folder) -> meta`` into a temporary folder and move it into place (once: under the
        key's lock, an entry another process finished meanwhile is returned instead of rebuilt)."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".locks" / stage / f"{key}.lock"  # beside, not inside, the stage's entries
        lock.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock):
            if self.has(stage, key):
                return self.meta(stage, key)
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta = build(tmp)
            digests = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / _DIGESTS).write_text(json.dumps(digests))
            (tmp / "done.json").write_text(json.dumps(meta, default=str))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            return meta
