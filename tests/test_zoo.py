"""The pretrained tiny model zoo: building, the model card, locating, matrix and CLI wiring.

The registered recipes take minutes to build, so these tests build a scaled-down recipe
(tiny model, a few hundred samples, one epoch) through the same code path.
"""
import dataclasses
import json

import pytest
import torch

from toolkit import cli
from toolkit.data import images_to_tensor
from toolkit.matrix import MatrixError, MatrixSpec
from toolkit.surrogates import load_surrogate
from toolkit.zoo import (CARD, ZOO, ZooRecipe, build_zoo_model, packaged_folder, read_card, recipe_hash,
                         tokenizer_corpus, zoo_folder)

SMALL = ZooRecipe(
    name="test-llava", family="llava", seed=0,
    arch={"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_layers": 1, "vision_hidden_size": 32,
          "vision_layers": 1, "vocab_size": 700},
    data={"name": "scenes_pretrain", "n_train": 96, "n_test": 24, "image_size": 32, "seed": 5},
    train={"mode": "full", "epochs": 1, "lr": 5e-3, "batch_size": 32},
    summary="test recipe")


@pytest.fixture(scope="module")
def small_zoo_model(tmp_path_factory):
    return build_zoo_model(SMALL, tmp_path_factory.mktemp("zoo") / "test-llava", eval_samples=24)


def test_build_writes_a_loadable_folder_with_a_card(small_zoo_model):
    card = read_card(small_zoo_model)
    assert card["recipe"] == SMALL.to_dict() and card["recipe_hash"] == recipe_hash(SMALL)
    assert {"all", "caption", "size", "text_colour"} <= set(card["pretrain_scores"])
    assert all(0.0 <= v <= 1.0 for v in card["pretrain_scores"].values())
    assert len(card["pretrain_epoch_losses"]) == 1 and card["eval_samples"] == 24
    import hashlib
    for name, digest in card["files"].items():
        assert hashlib.sha256((small_zoo_model / name).read_bytes()).hexdigest() == digest
    model = load_surrogate(small_zoo_model)
    assert model.family == "llava"
    answers = model.answer(images_to_tensor([__import__("numpy").zeros((32, 32, 3), "uint8")]), ["What is shown?"])
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_weights_are_stored_in_half_precision(small_zoo_model):
    from safetensors import safe_open

    files = list(small_zoo_model.glob("*.safetensors"))
    assert files
    with safe_open(str(files[0]), "pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert dtypes == {torch.float16}


def test_build_changes_the_weights(small_zoo_model, tmp_path):
    """Pretraining moves the weights away from the random init of the same seed."""
    from toolkit.surrogates.tiny import build_tiny

    raw = build_tiny("llava", tmp_path / "raw", seed=SMALL.seed, extra_corpus=tokenizer_corpus(32), **SMALL.arch)
    a = dict(load_surrogate(raw).model.named_parameters())
    b = dict(load_surrogate(small_zoo_model).model.named_parameters())
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).detach().abs().max()) for k in a) > 5e-3  # fp16 storage alone moves them < 1e-3


def test_task_words_are_single_tokens_in_a_zoo_tokenizer(small_zoo_model):
    tok = load_surrogate(small_zoo_model).tokenizer
    for word in ("triangle", "purple", "diamond", "orange", "middle", "square"):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_recipe_hash_follows_the_recipe():
    assert recipe_hash(SMALL) == recipe_hash(dataclasses.replace(SMALL))
    assert recipe_hash(SMALL) != recipe_hash(dataclasses.replace(SMALL, seed=1))
    assert recipe_hash(SMALL) != recipe_hash(dataclasses.replace(SMALL, train={**SMALL.train, "epochs": 2}))


def test_build_refuses_an_existing_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        build_zoo_model(SMALL, tmp_path / "x")


def test_zoo_folder_uses_the_cache_and_refuses_unknown_names(small_zoo_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MMGUARD_ZOO_CACHE", str(tmp_path))
    monkeypatch.setitem(ZOO, SMALL.name, SMALL)
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo_folder("no-such-model")
    with pytest.raises(FileNotFoundError, match="mmguard zoo build"):
        zoo_folder(SMALL.name, build=False)
    import shutil
    shutil.copytree(small_zoo_model, tmp_path / f"{SMALL.name}-{recipe_hash(SMALL)}")
    assert zoo_folder(SMALL.name, build=False) == tmp_path / f"{SMALL.name}-{recipe_hash(SMALL)}"


def test_every_registered_recipe_is_disjoint_from_the_downstream_task():
    from toolkit.datasets import DATASETS

    downstream = set(DATASETS.create("scenes").config.types)
    assert len({r.family for r in ZOO.values()}) >= 3
    for recipe in ZOO.values():
        pre = DATASETS.create(recipe.data["name"], **{k: v for k, v in recipe.data.items() if k != "name"})
        assert not set(pre.config.types) & downstream, recipe.name
        assert packaged_folder(recipe.name) is None or read_card(packaged_folder(recipe.name))


def test_matrix_accepts_zoo_models_and_rejects_unknown_ones():
    base = {"data": {"source": "scenes", "n_train": 40, "n_test": 20}, "victims": ["v"]}
    name = sorted(ZOO)[0]
    MatrixSpec.from_dict({**base, "models": {"v": {"zoo": name}}})
    with pytest.raises(MatrixError, match="models.v.zoo"):
        MatrixSpec.from_dict({**base, "models": {"v": {"zoo": "nope"}}})
    with pytest.raises(MatrixError, match="exactly one of"):
        MatrixSpec.from_dict({**base, "models": {"v": {"zoo": name, "tiny": "llava"}}})


def test_cli_zoo_list_and_build(small_zoo_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMGUARD_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ZOO, SMALL.name, SMALL)
    assert cli.main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ZOO) and "not built" in out
    assert cli.main(["zoo", "build", "nope"]) == 2
    assert "unknown zoo model" in capsys.readouterr().err
    assert cli.main(["zoo", "build", SMALL.name, "--out", str(tmp_path / "zoo"), "--quiet", "--threads", "2"]) == 0
    card = json.loads((tmp_path / "zoo" / SMALL.name / CARD).read_text())
    assert card["recipe_hash"] == recipe_hash(SMALL)


def test_matrix_runs_a_zoo_victim_on_the_procedural_task(small_zoo_model, tmp_path, monkeypatch):
    """End to end: zoo victim from the cache, scenes data, zero-shot row, LoRA fine-tune rows."""
    import shutil

    from toolkit.matrix import run_matrix

    monkeypatch.setenv("MMGUARD_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ZOO, SMALL.name, SMALL)
    shutil.copytree(small_zoo_model, tmp_path / "cache" / f"{SMALL.name}-{recipe_hash(SMALL)}")
    spec = {"name": "zoo", "data": {"source": "scenes", "n_train": 24, "n_test": 12, "image_size": 32, "grid": 2,
                                    "max_objects": 2},
            "models": {"v": {"zoo": SMALL.name}}, "victims": ["v"], "zero_shot": True,
            "defenses": [{"name": "random_noise"}],
            "finetune": {"mode": "lora", "epochs": 1, "batch_size": 8, "lora_rank": 4, "warmup": 0.1}}
    rows = run_matrix(spec, tmp_path / "run", progress=False)
    assert {r["defense"] for r in rows} == {"zero-shot", "clean", "random_noise"}
    assert all(r["error"] is None and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
