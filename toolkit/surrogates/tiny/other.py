"""Registry of tiny builders for non-LVLM surrogates (open_clip CLIP, timm classifiers).

Kept apart from :data:`toolkit.surrogates.tiny.TINY_BUILDERS`, whose families
the LVLM contract tests iterate over; these families have their own tests.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Union

__all__ = ["OTHER_TINY_BUILDERS", "register_tiny_other", "build_tiny_other", "other_tiny_families"]

#: surrogate registry name -> builder(path, *, seed=0, **kw) -> Path
OTHER_TINY_BUILDERS: Dict[str, Callable] = {}


def register_tiny_other(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a non-LVLM tiny builder under the surrogate registry ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in OTHER_TINY_BUILDERS:
            raise KeyError(f"tiny builder {name!r} registered twice")
        OTHER_TINY_BUILDERS[name] = fn
        return fn
    return deco


def other_tiny_families() -> List[str]:
    """Names with a non-LVLM tiny builder (sorted)."""
    return sorted(OTHER_TINY_BUILDERS)


def build_tiny_other(name: str, path: Union[str, os.PathLike], **kwargs: Any) -> Path:
    """Build and save the tiny model registered as ``name`` at ``path``; returns the folder."""
    if name not in OTHER_TINY_BUILDERS:
        raise KeyError(f"no non-LVLM tiny builder for {name!r}; available: {', '.join(other_tiny_families())}")
    return OTHER_TINY_BUILDERS[name](path, **kwargs)
