"""Name -> class registries and frozen, validated configs.

Every pluggable kind (defenses, countermeasures, surrogates, metrics) has one
:class:`Registry`. Entries are classes that declare a ``Config`` dataclass; the
registry builds the config from keyword arguments, so an unknown key raises
before any work is done.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Generic, List, Type, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "Config", "check_range", "check_choice", "make_config"]


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
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Type[T]] = {}

    def register(self, name: str) -> Callable[[Type[T]], Type[T]]:
        """Class decorator registering ``cls`` under ``name`` (lowercase, unique)."""
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names must be non-empty lowercase, got {name!r}")

        def deco(cls: Type[T]) -> Type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` (``KeyError`` when absent); for plugins and tests that register temporarily."""
        self.get(name)
        del self._entries[name]

    def names(self) -> List[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def get(self, name: str) -> Type[T]:
        """The class registered as ``name``; ``KeyError`` lists the known names."""
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
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
