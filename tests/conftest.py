"""Shared fixtures: a tiny LLaVA saved once per session, small digits splits."""
from __future__ import annotations

import os

import pytest
import torch

from toolkit.digits import load_digits_vqa
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny_llava

torch.set_num_threads(int(os.environ.get("MMGUARD_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """Folder of a random-init tiny LLaVA (model + processor, save_pretrained layout)."""
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture()
def llava(tiny_llava_dir):
    """A freshly loaded tiny LLaVA surrogate."""
    return load_surrogate(tiny_llava_dir)


@pytest.fixture(scope="session")
def digits_small():
    """(train, test) digits VQA with 60 samples in all, 32x32 RGB."""
    return load_digits_vqa(image_size=32, limit=60, seed=0)


@pytest.fixture()
def llava_json(tmp_path):
    """``llava_json(samples, n)``: the first ``n`` samples written as a LLaVA-JSON dataset (PNGs under img/);
    returns the path of its train.json."""
    def write(samples, n):
        import json

        from PIL import Image

        root = tmp_path / "data"
        (root / "img").mkdir(parents=True)
        records = []
        for i, s in enumerate(list(samples)[:n]):
            Image.fromarray(s.image).save(root / "img" / f"{i}.png")
            records.append({"id": s.id, "image": f"img/{i}.png",
                            "conversations": [{"from": "human", "value": "<image>\n" + s.question},
                                              {"from": "gpt", "value": s.answer}]})
        (root / "train.json").write_text(json.dumps(records))
        return root / "train.json"
    return write


@pytest.fixture()
def crash_then_resume(monkeypatch):
    """``crash_then_resume(make, data, surrogates, checkpoint)``: run ``make().protect`` with ``checkpoint``
    and an interruption during round 2's scoring (the run must fail and leave the checkpoint), then run it
    again on the same checkpoint uninterrupted and return that resumed protection."""
    from toolkit.defenses.minmin import MinMinDefense

    def run(make, data, surrogates, checkpoint):
        original, calls = MinMinDefense._score, {"n": 0}

        def crashing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated interruption in round 2")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(MinMinDefense, "_score", crashing)
        with pytest.raises(RuntimeError, match="simulated interruption"):
            make().protect(data, surrogates, checkpoint=checkpoint)
        assert checkpoint.is_file()
        monkeypatch.setattr(MinMinDefense, "_score", original)
        return make().protect(data, surrogates, checkpoint=checkpoint)
    return run
