"""The import graph matches docs/ARCHITECTURE.md's layers; no private names cross modules; the runner names
no component."""
from __future__ import annotations

import ast
import importlib.util
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "toolkit"


def _modules():
    for f in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = f.name == "__init__.py"
        name = name[: -len(".__init__")] if is_pkg else name
        yield f, name, name if is_pkg else name.rpartition(".")[0]


def _imports():
    """(importing module file, importing module, imported module, imported names) for every toolkit import."""
    for f, name, package in _modules():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = (importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                          if node.level else node.module or "")
                if target.split(".")[0] == "toolkit":
                    yield f, name, target, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "toolkit":
                        yield f, name, a.name, []


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "toolkit"


def test_imports_follow_the_documented_layers():
    block = re.search(r"```layers\n(.*?)```", (ROOT / "docs" / "ARCHITECTURE.md").read_text(), re.S).group(1)
    level = {unit.strip(): i for i, line in enumerate(block.strip().splitlines()) for unit in line.split(",")}
    units = {_unit(name) for _, name, _ in _modules()} - {"toolkit"}
    assert units == set(level), f"units missing from the layers block: {units - set(level)}; " \
                                f"listed but absent: {set(level) - units}"
    wrong = defaultdict(set)
    for f, name, target, _ in _imports():
        a, b = _unit(name), _unit(target)
        if a != b and a != "toolkit" and (b == "toolkit" or level[b] <= level[a]):
            wrong[f"{a} -> {b}"].add(f.relative_to(ROOT).as_posix())
    assert not wrong, dict(wrong)


def test_no_private_names_cross_modules():
    crossing = [(f.name, target, n) for f, name, target, names in _imports() for n in names
                if n.startswith("_") and not n.startswith("__") and target != name]
    assert not crossing


def test_only_surrogates_import_the_transformers_adapter_base():
    outside = [f.relative_to(ROOT).as_posix() for f, name, target, names in _imports()
               if ("hf_lvlm" in target or "hf_lvlm" in names) and _unit(name) != "surrogates"]
    assert not outside


def test_the_runner_names_no_component():
    from toolkit.attacks import COUNTERMEASURES
    from toolkit.defenses import DEFENSES
    from toolkit.metrics import METRICS
    from toolkit.surrogates import SURROGATES

    names = (set(DEFENSES.names()) | set(COUNTERMEASURES.names()) | set(METRICS.names())
             | set(SURROGATES.names())) - {"accuracy"}  # the runner's own evaluation column
    found = [(f.name, n) for f in sorted((PACKAGE / "matrix").glob("*.py")) for n in sorted(names)
             if re.search(r"[\"']%s[\"']" % re.escape(n), f.read_text())]
    assert not found
