"""benchmarks/zoo_sibling.py: a zoo recipe with other seeds and nothing else changed."""
import dataclasses
from pathlib import Path

import pytest

from toolkit.registry import import_plugin
from toolkit.zoo import ZOO

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_sibling.py"


def test_sibling_changes_only_the_seeds():
    sib = import_plugin(str(SCRIPT)).sibling_recipe("llava-d", 0, 1000, 78)
    base = ZOO["llava-d"]
    assert (sib.name, sib.seed, sib.data["seed"], sib.vision["seed"]) == ("llava-d-sib", 0, 1000, 78)
    assert {k: v for k, v in sib.data.items() if k != "seed"} == {k: v for k, v in base.data.items() if k != "seed"}
    assert {k: v for k, v in sib.vision.items() if k != "seed"} == {k: v for k, v in base.vision.items() if k != "seed"}
    same = {f.name for f in dataclasses.fields(base)} - {"name", "seed", "data", "vision", "summary"}
    assert all(getattr(sib, f) == getattr(base, f) for f in same)


def test_sibling_refuses_the_base_seeds():
    with pytest.raises(ValueError, match="own"):
        import_plugin(str(SCRIPT)).sibling_recipe("llava-d", 2, 1002, 78)
