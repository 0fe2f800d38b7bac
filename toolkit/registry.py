"""Name -> class registries and frozen, validated configs.

Every pluggable kind (defenses, countermeasures, surrogates, metrics) has one
:class:`Registry`. Entries are classes that declare a ``Config`` dataclass; the
registry builds the config from keyword arguments, so an unknown key raises
before any work is done.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Generic, List, Optional, Type, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "Config", "check_range", "check_choice", "make_config", "import_plugin"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every frozen keyword-only config.

    Subclasses validate in ``__post_init__`` and raise ``ValueError`` naming the
    field, its value and the allowed range.
    """

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON view (for manifests and cache keys)."""
        return dataclasses.asdict(self)


def make_config(config_cls: Type[Config], owner: str, values: Dict[str, Any]) -> Config:
    """Build ``config_cls(**values)``, naming the owner and the valid keys on a bad key."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(
            f"{owner}: unknown config key(s) {unknown}; valid keys are {sorted(names)}"
        )
    return config_cls(**values)


def check_range(name: str, value: float, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number in the given interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value!r}")


def check_choice(name: str, value: Any, choices) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


class Registry(Generic[T]):
    """A lowercase name -> class table with ``names()`` and ``create(name, **config)``.

    Args:
        kind: what the entries are ("defense", "countermeasure", ...), used in errors.
        group: the entry-point group whose installed plugins are imported the first time the
            registry is asked for its names (default ``mmguard.<kind>s``, e.g. ``mmguard.defenses``).
    """

    def __init__(self, kind: str, group: Optional[str] = None) -> None:
        self.kind = kind
        self.group = group if group is not None else f"mmguard.{kind}s"
        self._entries: Dict[str, Type[T]] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[Type[T]], Type[T]]:
        """Class decorator registering ``cls`` under ``name`` (lowercase, unique).

        Registering the same class again (same module and qualified name: a re-imported module, a
        re-run notebook cell) replaces the earlier definition; another class under a taken name is an
        error. A nested ``Config`` that declares fields must be a dataclass.
        """
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names must be non-empty lowercase, got {name!r}")

        def deco(cls: Type[T]) -> Type[T]:
            old = self._entries.get(name)
            if old is not None and _qualified(old) != _qualified(cls):
                raise ValueError(f"{self.kind} {name!r} is already registered (by {_qualified(old)})")
            config = getattr(cls, "Config", None)
            if (isinstance(config, type) and vars(config).get("__annotations__")
                    and "__dataclass_fields__" not in vars(config)):
                raise TypeError(f"{self.kind} {name!r}: {cls.__qualname__}.Config declares fields but is not a "
                                "dataclass; decorate it with @dataclass(frozen=True, kw_only=True)")
            if old is not None:
                log.info("%s %r: replacing the earlier definition of %s", self.kind, name, _qualified(cls))
            self._entries[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` (``KeyError`` when absent); for plugins and tests that register temporarily."""
        self.get(name)
        del self._entries[name]

    def load_plugins(self) -> List[str]:
        """Import the modules of the installed entry points of :attr:`group` (once per process).

        Returns the entry-point names imported now. A plugin that fails to import is a
        ``RuntimeWarning`` naming it; the registry keeps working without it.
        """
        if self._plugins_loaded:
            return []
        self._plugins_loaded = True  # first: a plugin's own registrations must not re-enter
        loaded = []
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                ep.load()
                loaded.append(ep.name)
            except Exception as exc:  # a broken third-party plugin must not take the toolkit down
                warnings.warn(f"{self.group} plugin {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        return loaded

    def names(self) -> List[str]:
        """Sorted registered names (installed plugins included)."""
        self.load_plugins()
        return sorted(self._entries)

    def get(self, name: str) -> Type[T]:
        """The class registered as ``name``; ``KeyError`` lists the known names."""
        if name not in self._entries:
            self.load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, **config: Any) -> T:
        """Instantiate the entry ``name`` with keyword config (unknown keys raise)."""
        return self.get(name)(**config)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_plugins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_plugin(spec: str):
    """Import a plugin module that registers components: a module name (the working directory is searched
    too, as ``python -m`` does) or a ``.py`` file path. Returns the module; ``ImportError`` names it."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ImportError(f"plugin file {spec!r} does not exist")
        name = f"mmguard_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    return importlib.import_module(spec)
