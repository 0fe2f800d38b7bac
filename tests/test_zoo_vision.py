"""The zoo's dense visual pretraining stage (toolkit.zoo.vision): labels, cell pooling, that it learns (against a
control that does not), that it leaves the language model alone, and its place in a recipe and a build."""
import dataclasses
import math

import pytest
import torch

from toolkit.datasets import DATASETS
from toolkit.datasets.vocab import COLOUR_NAMES, SHAPES, SIZES, WORDS
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny
from toolkit.zoo import ZooRecipe, build_zoo_model, read_card, recipe_hash, tokenizer_corpus
from toolkit.zoo.vision import IGNORE, VisionStage, cell_pooling, head_targets, pretrain_vision, vision_labels

LAYOUT = {"grid": 2, "max_objects": 2, "object_scale": [0.6, 0.95], "text_scale": 0.5}
ARCH = {"image_size": 48, "patch_size": 8, "hidden_size": 64, "num_layers": 1, "vision_hidden_size": 48,
        "vision_layers": 1, "vocab_size": 700}


@pytest.fixture(scope="module")
def data():
    return DATASETS.create("scenes_pretrain", types=["caption"], n_train=768, n_test=192, image_size=48, seed=3,
                           **LAYOUT).build()


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("raw") / "llava", seed=0, extra_corpus=tokenizer_corpus(48),
                      **ARCH)


def test_labels_follow_the_scene(data):
    train = list(data[0])[:200]
    labels = vision_labels(train, 2)
    assert labels.shape == (200, 14)
    for sample, row in zip(train, labels.tolist()):
        scene = sample.meta["scene"]
        if scene["domain"] == "signs":
            assert row[:12] == [IGNORE] * 12 and row[12:] == [WORDS.index(scene["word"]),
                                                             COLOUR_NAMES.index(scene["text_colour"])]
            continue
        assert row[12:] == [IGNORE, IGNORE]
        for cell in range(4):
            here = [o for o in scene["objects"] if o["row"] * 2 + o["col"] == cell]
            expected = ([SHAPES.index(here[0]["shape"]), COLOUR_NAMES.index(here[0]["colour"]),
                         SIZES.index(here[0]["size"])] if here else [4, len(COLOUR_NAMES), 2])
            assert row[3 * cell:3 * cell + 3] == expected


def test_cell_pooling_assigns_each_patch_to_its_cell(raw_model):
    model = load_surrogate(raw_model)
    weights = cell_pooling(model, 48, 2)  # 6 x 6 patches of 8 px, 2 x 2 cells of 24 px: 9 patches each
    assert weights.shape == (4, 36) and torch.allclose(weights.sum(1), torch.ones(4))
    assert torch.equal((weights > 0).sum(1), torch.full((4,), 9))
    assert weights[0, 0] > 0 and weights[3, 35] > 0 and weights[0, 35] == 0  # top left / bottom right patches
    with pytest.raises(ValueError, match="hold no image token"):
        cell_pooling(model, 48, 9)  # 6 patches a side cannot cover 9 cells a side

    class WithCls:
        def image_token_regions(self, h, w):
            return torch.tensor([[0.0, 0.0, 48.0, 48.0], [0.0, 0.0, 24.0, 24.0]])
    with pytest.raises(ValueError, match="whole image"):
        cell_pooling(WithCls(), 48, 2)


def test_the_stage_learns_to_see_and_leaves_the_language_model_alone(raw_model, data):
    torch.manual_seed(0)
    train, test = list(data[0]), list(data[1])
    chance = 1 / len(COLOUR_NAMES)
    scores = {}
    for label, lr in (("trained", 3e-3), ("control", 1e-7)):  # the control: same steps, no real update
        model = load_surrogate(raw_model)
        before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
        losses, scores[label] = pretrain_vision(model, train, 2, VisionStage(epochs=6, lr=lr, batch_size=16),
                                                held_out=test)
        assert len(losses) == 6
        after = dict(model.model.named_parameters())
        for name, value in before.items():
            if "language_model" in name or "lm_head" in name:
                assert torch.equal(value, after[name]), name  # only the encoder and projector are trained
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert moved and all("vision_tower" in n or "multi_modal_projector" in n for n in moved)
    # measured: colour 0.95 / size 0.92 vs 0.19 / 0.50 for the control (chance 0.125 among the colours)
    assert scores["trained"]["colour"] >= 0.6 > scores["control"]["colour"] + 0.3, scores
    assert scores["trained"]["colour"] > chance + 0.4 and set(scores["trained"]) == {
        "shape", "colour", "size", "empty", "word", "text_colour"}


def _switched_on(raw_model, data, flag):
    """One epoch of the stage at a learning rate that moves nothing, with the ``flag`` head off and on: the
    first epoch's extra loss and the held-out scores of each run (keyed False / True)."""
    train, test = list(data[0])[:64], list(data[1])[:32]
    runs = {on: pretrain_vision(load_surrogate(raw_model), train, 2,
                                VisionStage(epochs=1, lr=1e-7, batch_size=32, **{flag: on}), held_out=test)
            for on in (False, True)}
    return runs[True][0][0] - runs[False][0][0], {on: run[1] for on, run in runs.items()}


def test_the_where_head_targets_each_token_s_cell_and_adds_its_loss(raw_model, data):
    """``where=True`` adds a per-token head naming the grid cell of each image token: its targets are the
    cells (written out here for 6 x 6 patches on a 2 x 2 grid), its cross-entropy joins the stage's loss
    (about ln 4 at a learning rate that moves nothing) and it is scored on held-out images; off by default."""
    model = load_surrogate(raw_model)
    pooling = cell_pooling(model, 48, 2)
    expected = torch.tensor([(t // 6 // 3) * 2 + (t % 6) // 3 for t in range(36)])
    labels = vision_labels(list(data[0])[:3], 2)
    assert torch.equal(head_targets(labels, 4, pooling)["where"], expected.expand(3, -1))
    assert "where" not in head_targets(labels, 4)
    extra, scores = _switched_on(raw_model, data, "where")
    assert abs(extra - math.log(4)) < 0.15, extra
    assert "where" not in scores[False] and 0 <= scores[True]["where"] <= 1


def test_dense_scores_the_object_heads_on_each_token(raw_model, data):
    """``dense=True`` asks every image token for the object of its own cell: its targets are the cell's labels
    copied to the cell's tokens (signs: ignored), its three cross-entropies (shape / colour / size, each with
    "empty") join the loss (about ln 5 + ln 7 + ln 3 at a learning rate that moves nothing), and it is scored
    on held-out images; without the token-to-cell map it is refused."""
    model = load_surrogate(raw_model)
    pooling = cell_pooling(model, 48, 2)
    samples = list(data[0])[:8]
    labels = vision_labels(samples, 2)
    targets = head_targets(labels, 4, pooling, dense=True)
    cell_of_token = pooling.argmax(0)
    for key in ("shape", "colour", "size"):
        assert targets[f"{key}_token"].shape == (8, 36)
        assert torch.equal(targets[f"{key}_token"], targets[key][:, cell_of_token])
    signs = [i for i, s in enumerate(samples) if s.meta["scene"]["domain"] == "signs"]
    assert signs and all(bool((targets["shape_token"][i] == -100).all()) for i in signs)
    with pytest.raises(ValueError, match="pooling"):
        head_targets(labels, 4, dense=True)
    extra, scores = _switched_on(raw_model, data, "dense")
    assert abs(extra - math.log(5 * 7 * 3)) < 0.4, extra
    assert {"shape_token", "colour_token", "size_token"} <= set(scores[True]) and "where" not in scores[True]
    assert not {"shape_token", "where"} & set(scores[False])


def test_stage_config_is_validated():
    with pytest.raises(ValueError, match="epochs"):
        VisionStage(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        VisionStage(lr=0.0)


def test_a_recipe_without_the_stage_keeps_its_hash_and_a_build_with_it_records_it(tmp_path):
    base = ZooRecipe(name="v", family="llava", seed=0, arch=ARCH,
                     data={"name": "scenes_pretrain", "n_train": 64, "n_test": 16, "image_size": 48, "seed": 5,
                           **LAYOUT},
                     train={"mode": "full", "epochs": 1, "lr": 5e-3, "batch_size": 32})
    assert "vision" not in base.to_dict()  # so the shipped cards' recipe hashes still match
    staged = dataclasses.replace(base, vision={"n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 32})
    assert recipe_hash(staged) != recipe_hash(base) and staged.to_dict()["vision"]["epochs"] == 1
    card = read_card(build_zoo_model(staged, tmp_path / "m", eval_samples=16))
    assert card["recipe_hash"] == recipe_hash(staged) and len(card["vision_epoch_losses"]) == 1
    assert set(card["vision_scores"]) >= {"shape", "colour", "size"} and card["vision_seconds"] >= 0
    with pytest.raises(TypeError, match="unknown config key"):
        build_zoo_model(dataclasses.replace(base, vision={"epoch": 1}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_stage_depends_on_its_seed_not_on_the_global_random_state(raw_model, data):
    train, test = list(data[0])[:96], list(data[1])[:32]
    runs = []
    for global_seed, stage_seed in ((0, 5), (1, 5), (0, 6)):
        torch.manual_seed(global_seed)
        runs.append(pretrain_vision(load_surrogate(raw_model), train, 2,
                                    VisionStage(epochs=1, batch_size=32, seed=stage_seed), held_out=test)[0])
    assert runs[0] == runs[1] and runs[0] != runs[2]
