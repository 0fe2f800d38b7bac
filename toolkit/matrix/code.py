"""Code identity of the components a matrix runs, so a cache entry is never reused after its code changed.

A protection or a transformed release is cached under a key that includes
:func:`code_identity` of the defense or countermeasure class that produced it:
the package version, plus a digest of the source of every module that defines a
class in the component's MRO and of the package modules those modules import
(one level: ``toolkit.engine``, ``toolkit.triggers``, the surrogate base, ...).
Sources are compared as syntax trees without docstrings, so comments,
docstrings and formatting do not count; any other edit does. A component may
instead declare ``code_version = "..."`` (its own promise: bump it when the
behaviour changes), which replaces the source digest. The downstream stages
(fine-tune, evaluate) key on the release's key, so they follow.
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import sys
from typing import Iterable, List, Optional, Tuple

from ..version import __version__

__all__ = ["code_identity", "source_digest"]

log = logging.getLogger(__name__)

#: top-level packages whose code is the toolkit's (their imports are followed one level)
_HOME = "toolkit"


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _stamp(name: str) -> Optional[Tuple[str, int]]:
    """(file, modification time in ns) of a loaded module's source, or None."""
    path = getattr(sys.modules.get(name), "__file__", None)
    try:
        return (path, os.stat(path).st_mtime_ns) if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _parse(name: str, stamp: Optional[Tuple[str, int]]) -> Optional[ast.Module]:
    try:
        return ast.parse(inspect.getsource(sys.modules[name]))
    except (KeyError, OSError, TypeError, SyntaxError):
        return None


def _module_tree(name: str) -> Optional[ast.Module]:
    """The syntax tree of loaded module ``name`` (re-read when its file changes), or None."""
    return _parse(name, _stamp(name)) if name in sys.modules else None


def source_digest(name: str) -> str:
    """sha256 (16 hex digits) of module ``name``'s syntax tree without docstrings; ``"unavailable"`` when its
    source cannot be read (a class typed into an interactive session)."""
    tree = _module_tree(name)
    if tree is None:
        log.warning("no source for module %r: editing it will not invalidate cached matrix stages", name)
        return "unavailable"
    return hashlib.sha256(ast.dump(_strip_docstrings(copy.deepcopy(tree))).encode()).hexdigest()[:16]


def _imported_home_modules(name: str) -> List[str]:
    """Modules of the toolkit that module ``name`` imports at module level (relative imports resolved)."""
    tree = _module_tree(name)
    if tree is None:
        return []
    package = name if getattr(sys.modules.get(name), "__path__", None) else name.rpartition(".")[0]
    out = []
    for node in tree.body:
        targets: Iterable[str] = ()
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else (node.module or "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]  # `from . import x` names a module
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        out += [t for t in targets if t.split(".")[0] == _HOME and t in sys.modules]
    return out


def _component_modules(cls: type) -> List[str]:
    """Modules defining ``cls`` and its bases (stdlib and ``object`` left out), then the toolkit modules they
    import, in a stable order without repeats."""
    own = []
    for klass in cls.__mro__:
        name = klass.__module__
        if klass is object or name.split(".")[0] in sys.stdlib_module_names or name == "builtins":
            continue
        if name not in own:
            own.append(name)
    out = list(own)
    for name in own:
        if name.split(".")[0] == _HOME or name == cls.__module__:
            out += [m for m in _imported_home_modules(name) if m not in out]
    return out


def code_identity(cls: type) -> str:
    """What a cache key records about the code of component class ``cls`` (see the module docstring)."""
    declared = getattr(cls, "code_version", None)
    if declared is not None:
        return f"{__version__}:{cls.__module__}.{cls.__qualname__}:declared:{declared}"
    digest = hashlib.sha256(" ".join(f"{m}={source_digest(m)}" for m in _component_modules(cls)).encode())
    return f"{__version__}:{digest.hexdigest()[:16]}"
