"""Ensembles of surrogates of different families, and `mmguard protect` with any family's folder."""
import json

import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.cli import main
from toolkit.data import images_to_tensor
from toolkit.surrogates import Ensemble, load_surrogate
from toolkit.surrogates.tiny import build_tiny
from toolkit.surrogates.tiny.other import build_tiny_other


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("ens") / "qwen", seed=3)


def test_weighted_loss_and_gradients(llava, qwen_dir, digits_small):
    qwen = load_surrogate(qwen_dir)
    ens = Ensemble([llava, qwen], weights=[3, 1])
    assert ens.weights == pytest.approx([0.75, 0.25])
    assert ens.capabilities == llava.capabilities & qwen.capabilities
    samples = list(digits_small[0][:3])
    x = images_to_tensor([s.image for s in samples]).requires_grad_(True)
    with ens.frozen():
        loss, correct = ens.loss_and_correct(x, samples)
        with torch.no_grad():
            expected = 0.75 * llava.loss(x, samples) + 0.25 * qwen.loss(x, samples)
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert not any(p.requires_grad for m in ens.members for p in m.model.parameters())
    assert torch.allclose(loss, expected, atol=1e-5) and correct.shape == (3,)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.requires_grad for p in llava.model.parameters())  # restored


def test_bad_ensembles(llava):
    with pytest.raises(ValueError, match="at least two"):
        Ensemble([llava])
    with pytest.raises(ValueError, match="weights"):
        Ensemble([llava, llava], weights=[1, -1])
    with pytest.raises(ValueError, match="2 members"):
        Ensemble([llava, llava], weights=[1, 2, 3])


@pytest.mark.parametrize("name, extra", [("emn", {}), ("mmguard_crs", {"max_trigger_tokens": 2,
                                                                        "trigger_candidates": 2})])
def test_defense_against_ensemble_restores_members(name, extra, llava, qwen_dir, digits_small):
    qwen = load_surrogate(qwen_dir)
    before = [{k: v.clone() for k, v in m.model.state_dict().items()} for m in (llava, qwen)]
    data = digits_small[0][:6]
    cfg = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 6, "pgd_batch_size": 6, "eval_size": 6,
           "train_mode": "lora", **extra}
    out = DEFENSES.create(name, **cfg).protect(data, Ensemble([llava, qwen]))
    assert max(np.abs(p.image.astype(int) - s.image.astype(int)).max() for p, s in zip(out.dataset, data)) <= 8
    assert out.surrogates[0]["family"] == "ensemble" and len(out.surrogates[0]["members"]) == 2
    for m, state in zip((llava, qwen), before):
        assert all(torch.equal(m.model.state_dict()[k], v) for k, v in state.items())


@pytest.fixture()
def user_data(tmp_path, digits_small):
    from PIL import Image

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    records = []
    for i, s in enumerate(digits_small[0][:6]):
        Image.fromarray(s.image).save(root / "img" / f"{i}.png")
        records.append({"id": s.id, "image": f"img/{i}.png", "question": s.question, "answer": s.answer})
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return root / "train.jsonl"


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3", "mllama", "open_clip", "timm"])
def test_cli_protect_accepts_any_family(family, user_data, tmp_path):
    folder = tmp_path / family
    if family in ("open_clip", "timm"):
        build_tiny_other(family, folder, seed=0)
    else:
        build_tiny(family, folder, seed=0)
    rc = main(["protect", "--defense", "emn", "--surrogate", str(folder), "--data", str(user_data), "--out",
               str(tmp_path / "out"), "--quiet", "--set", "rounds=1", "--set", "train_steps=1",
               "--set", "pgd_steps=1", "--set", "eval_size=4"])
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["surrogates"][0]["family"] == family


def test_cli_ensemble_with_weights(user_data, tiny_llava_dir, qwen_dir, tmp_path, capsys):
    rc = main(["protect", "--defense", "emn", "--surrogate", str(tiny_llava_dir), "--surrogate", str(qwen_dir),
               "--weights", "2,1", "--data", str(user_data), "--out", str(tmp_path / "out"), "--quiet",
               "--set", "rounds=1", "--set", "train_steps=1", "--set", "pgd_steps=1", "--set", "eval_size=4",
               "--checkpoint", str(tmp_path / "ck.pt")])
    assert rc == 0 and (tmp_path / "ck.pt").is_file()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["surrogates"][0]["weights"] == pytest.approx([2 / 3, 1 / 3])
    rc = main(["protect", "--defense", "emn", "--surrogate", str(tiny_llava_dir), "--weights", "1,1", "--data",
               str(user_data), "--out", str(tmp_path / "out2"), "--quiet"])
    assert rc == 2 and "at least two" in capsys.readouterr().err
