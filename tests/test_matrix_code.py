"""Code-versioned cache keys: editing a component's code recomputes what depends on it; docstrings,
comments and formatting do not count; a declared ``code_version`` replaces the source digest."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from toolkit.matrix.code import code_identity

MODULE = '''
from toolkit.registry import Registry

REG = Registry("thing_{tag}")


@REG.register("scaled")
class Scaled:
    """A component."""

    def apply(self, x):
        return x * {factor}  # the behaviour
'''


def _load(path: Path, tag: str, factor: str, extra: str = ""):
    path.write_text(MODULE.format(tag=tag, factor=factor) + extra)
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a new stamp even within the clock's resolution
    name = path.stem
    importlib.invalidate_caches()
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    return module.REG.get("scaled")


def test_identity_follows_code_not_docstrings_comments_or_layout(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        first = code_identity(_load(tmp_path / "comp_a.py", "a", "2"))
        text = (tmp_path / "comp_a.py").read_text().replace('"""A component."""', '"""Reworded."""')
        text = text.replace("# the behaviour", "# reworded comment").replace("return x * 2", "return x   *   2")
        (tmp_path / "comp_a.py").write_text(text)
        os.utime(tmp_path / "comp_a.py", ns=(time.time_ns(), time.time_ns() + 10))
        same = code_identity(importlib.reload(sys.modules["comp_a"]).REG.get("scaled"))
        changed = code_identity(_load(tmp_path / "comp_a.py", "a", "3"))
    finally:
        sys.path.remove(str(tmp_path))
    assert first == same
    assert changed != first


def test_a_declared_code_version_replaces_the_digest(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        declared = "\n\nScaled.code_version = '7'\n"
        a = code_identity(_load(tmp_path / "comp_b.py", "b", "2", declared))
        b = code_identity(_load(tmp_path / "comp_b.py", "b", "5", declared))  # the author promised no change
        c = code_identity(_load(tmp_path / "comp_b.py", "b", "5", "\n\nScaled.code_version = '8'\n"))
    finally:
        sys.path.remove(str(tmp_path))
    assert a == b and a.endswith(":declared:7")
    assert c != b


def test_toolkit_components_hash_their_helpers():
    from toolkit.defenses import DEFENSES
    from toolkit.matrix.code import _component_modules

    modules = _component_modules(DEFENSES.get("mmguard_crs"))
    assert {"toolkit.defenses.mmguard", "toolkit.defenses.base", "toolkit.engine", "toolkit.triggers",
            "toolkit.attention"} <= set(modules)
    assert all(not m.startswith(("abc", "typing")) for m in modules)
    assert code_identity(DEFENSES.get("mmguard_crs")) != code_identity(DEFENSES.get("emn"))


PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from toolkit.defenses import DEFENSES, Defense, DefenseConfig, Proposal


@DEFENSES.register("flat_shift")
class FlatShift(Defense):
    """Adds a constant to every pixel (a test defense)."""

    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        return Proposal([s.image / 255.0 + {shift} * self.config.eps for s in dataset])
'''


def _matrix(spec_path: Path, out: Path, plugin_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(plugin_dir),
                                                                             os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main(sys.argv[1:]))",
                           "matrix", str(spec_path), "--out", str(out), "--quiet"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return {r["defense"]: r for r in rows}


def test_editing_a_defense_recomputes_its_cached_protection(tmp_path):
    """The quoted failure: after editing a defense's code, the rerun reused the old cached protection."""
    plugin = tmp_path / "plug" / "shift_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN.replace("{shift}", "1.0"))
    spec = {"name": "code", "plugins": ["shift_plugin"],
            "data": {"source": "digits", "image_size": 32, "limit": 24}, "models": {"v": {"tiny": "llava", "seed": 1}},
            "defenses": ["flat_shift"], "victims": ["v"], "metrics": ["accuracy", "linf"],
            "finetune": {"mode": "full", "epochs": 1, "batch_size": 16}, "seeds": [0]}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    first = _matrix(tmp_path / "spec.yaml", tmp_path / "run", plugin.parent)["flat_shift"]
    plugin.write_text(PLUGIN.replace("{shift}", "-0.5"))  # half the budget, the other way
    second = _matrix(tmp_path / "spec.yaml", tmp_path / "run", plugin.parent)["flat_shift"]
    protections = [p for p in (tmp_path / "run" / "cache" / "protect").iterdir() if not p.name.startswith(".")]
    assert len(protections) == 2  # a second protection, not the cached one
    assert abs(first["linf"] - 8 / 255) < 1e-6 and abs(second["linf"] - 4 / 255) < 1.5 / 255
    # a docstring-only edit reuses it
    plugin.write_text(PLUGIN.replace("{shift}", "-0.5").replace("(a test defense)", "(reworded)"))
    _matrix(tmp_path / "spec.yaml", tmp_path / "run", plugin.parent)
    assert len([p for p in (tmp_path / "run" / "cache" / "protect").iterdir() if not p.name.startswith(".")]) == 2
