"""Contract tests over every registered defense, plus EMN-specific checks."""
import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.data import DataError, VQADataset
from toolkit.defenses import enforce_budget

# Small, fast settings per defense (contract tests check behaviour, not efficacy).
FAST = {
    "random_noise": {},
    "random_trigger": {"max_trigger_tokens": 2},
    "emn": {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8},
    "tue": {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8},
    "rem": {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
            "adv_steps": 1},
    "mem": {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
            "max_trigger_tokens": 2, "trigger_candidates": 3, "trigger_rounds": 1},
}
for _variant in ("image", "text", "multimodal", "bph", "crs", "bph_max", "crs_max"):
    FAST[f"mmguard_{_variant}"] = {"rounds": 2, "train_steps": 1, "pgd_steps": 2, "batch_size": 8,
                                   "pgd_batch_size": 8, "eval_size": 8, "max_trigger_tokens": 2,
                                   "trigger_candidates": 3}
for _variant in ("bph", "crs"):  # one question in digits: the defender's own filter would pass no word
    FAST[f"mmguard_{_variant}_fluent"] = {**FAST[f"mmguard_{_variant}"], "filter_aware": False}


def test_every_registered_defense_has_fast_settings():
    assert set(FAST) == set(DEFENSES.names())


def _protect(name, data, surrogate, **extra):
    defense = DEFENSES.create(name, **{**FAST[name], **extra})
    return defense.protect(data, [surrogate] if defense.needs_surrogate else [])


@pytest.fixture()
def data(digits_small):
    return digits_small[0][:10]


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("eps", [8 / 255, 3.5 / 255])
def test_budget_held_after_uint8_rounding(name, eps, data, llava):
    out = _protect(name, data, llava, eps=eps)
    levels = int(np.floor(eps * 255 + 1e-6))
    changes = [np.abs(p.image.astype(int) - s.image.astype(int)).max() for p, s in zip(out.dataset, data)]
    assert max(changes) <= levels
    text_changed = any(p.question != s.question for p, s in zip(out.dataset, data))
    assert max(changes) >= 1 or (name == "mmguard_text" and text_changed)  # something was changed
    assert all(p.image.dtype == np.uint8 for p in out.dataset)
    assert [p.answer for p in out.dataset] == [s.answer for s in data]


@pytest.mark.parametrize("name", sorted(FAST))
def test_input_not_mutated(name, data, llava):
    images = [s.image.copy() for s in data]
    weights = {k: v.clone() for k, v in llava.model.state_dict().items()}
    flags = [p.requires_grad for p in llava.model.parameters()]
    _protect(name, data, llava)
    assert all(np.array_equal(a, s.image) for a, s in zip(images, data))
    state = llava.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)  # surrogate restored after training
    assert [p.requires_grad for p in llava.model.parameters()] == flags


@pytest.mark.parametrize("name", sorted(FAST))
def test_same_seed_same_result_other_seed_differs(name, data, llava):
    a = _protect(name, data, llava, seed=1)
    b = _protect(name, data, llava, seed=1)
    c = _protect(name, data, llava, seed=2)
    assert all(np.array_equal(x.image, y.image) and x.question == y.question for x, y in zip(a.dataset, b.dataset))
    assert any(not np.array_equal(x.image, y.image) or x.question != y.question for x, y in zip(a.dataset, c.dataset))


def test_enforce_budget_clips_a_cheating_proposal():
    src = np.full((4, 4, 3), 100, np.uint8)
    out = enforce_budget(src, np.full((4, 4, 3), 1.0, np.float32), 8 / 255)
    assert out.max() == 108
    with pytest.raises(ValueError, match="non-finite"):
        enforce_budget(src, np.full((4, 4, 3), np.nan, np.float32), 8 / 255)


def test_subclass_cannot_exceed_budget(data):
    from toolkit.defenses.base import Defense

    class Greedy(Defense):
        name = "greedy_test"

        def _protect(self, dataset, surrogates, progress, checkpoint=None):
            return [np.ones_like(s.image, dtype=np.float32) for s in dataset], {}

    out = Greedy(eps=4 / 255).protect(data)
    assert max(np.abs(p.image.astype(int) - s.image.astype(int)).max() for p, s in zip(out.dataset, data)) == 4


def test_protect_is_final_and_proposals_are_typed(data):
    from toolkit.defenses.base import Defense, Proposal

    with pytest.raises(TypeError, match="overrides Defense.protect, which is final"):
        class Sneaky(Defense):
            def protect(self, dataset, surrogates=None, progress=False, checkpoint=None):
                return dataset

    class OldStyle(Defense):
        name = "old_style_test"

        def _protect(self, dataset, surrogates, progress, checkpoint=None):
            return [s.image for s in dataset], {"questions": [s.question for s in dataset], "triggers": []}

    with pytest.raises(TypeError, match="return Proposal\\(images, questions=..., triggers=...\\)"):
        OldStyle().protect(data)
    with pytest.raises(ValueError, match="questions and triggers together"):
        Proposal([], questions=["q"])

    from dataclasses import dataclass

    from toolkit.defenses.base import DefenseConfig

    class Triggered(Defense):
        name = "triggered_test"

        @dataclass(frozen=True, kw_only=True)
        class Config(DefenseConfig):
            max_trigger_tokens: int = 2

        def _protect(self, dataset, surrogates, progress, checkpoint=None):
            return Proposal([s.image for s in dataset], questions=[f"zebra {s.question}" for s in dataset],
                            triggers=[{"words": ["zebra"], "position": "start"} for _ in dataset], info={"k": 1})

    out = Triggered().protect(data)
    assert out.dataset[0].question == f"zebra {data[0].question}" and out.info == {"k": 1}
    assert out.dataset[0].meta["trigger"]["words"] == ["zebra"]


def test_emn_needs_a_surrogate_and_validates_dataset(data):
    with pytest.raises(ValueError, match="needs at least one surrogate"):
        DEFENSES.create("emn").protect(data)
    with pytest.raises(DataError, match="empty"):
        DEFENSES.create("random_noise").protect(VQADataset([], "empty"))


def test_emn_descends_the_surrogate_loss(data, llava):
    """The error-minimising noise must lower the (adapted) surrogate's loss vs clean images."""
    out = _protect("emn", data, llava, rounds=3, pgd_steps=5)
    hist = out.info["history"]
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]


def test_emn_classwise_one_pattern_per_answer(digits_small, llava):
    data = digits_small[0][:20]
    out = _protect("emn", data, llava, granularity="class")
    deltas = out.deltas()
    by_answer = {}
    for s, d in zip(data, deltas):
        by_answer.setdefault(s.answer, []).append(d)
    # interior pixels (away from the [0,1] clip) share the class pattern exactly
    for ds in by_answer.values():
        ref = ds[0]
        for d in ds[1:]:
            assert np.mean(np.isclose(d, ref, atol=1.01 / 255)) > 0.5


def test_emn_lora_mode_leaves_base_weights(data, llava):
    weights = {k: v.clone() for k, v in llava.model.state_dict().items()}
    _protect("emn", data, llava, train_mode="lora")
    assert not llava.lora_active
    state = llava.model.state_dict()
    assert set(state) == set(weights) and all(torch.equal(state[k], weights[k]) for k in weights)


def _mixed_sizes(data):
    from PIL import Image

    out = []
    for i, s in enumerate(data):
        side = 32 if i % 2 else 40
        out.append(s.with_(image=np.asarray(Image.fromarray(s.image).resize((side, side + 4)))))
    return VQADataset(out, "mixed")


def test_emn_samplewise_keeps_mixed_resolutions(data, llava):
    mixed = _mixed_sizes(data[:6])
    out = _protect("emn", mixed, llava)
    assert [p.image.shape for p in out.dataset] == [s.image.shape for s in mixed]
    assert max(np.abs(p.image.astype(int) - s.image.astype(int)).max() for p, s in zip(out.dataset, mixed)) == 8
    with pytest.raises(ValueError, match="same size"):
        _protect("emn", mixed, llava, granularity="class")


def test_restart_every_resets_the_surrogate(data, llava):
    a = _protect("emn", data, llava, rounds=3, restart_every=1)
    b = _protect("emn", data, llava, rounds=3)
    assert len(a.info["history"]) == 3
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a.dataset, b.dataset))


def test_random_reinit_restarts_restore_the_surrogate(data, llava):
    weights = {k: v.clone() for k, v in llava.model.state_dict().items()}
    a = _protect("emn", data, llava, rounds=3, restart_every=1, restart_init="random")
    state = llava.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    b = _protect("emn", data, llava, rounds=3, restart_every=1, restart_init="same")
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a.dataset, b.dataset))
    with pytest.raises(ValueError, match="train_mode='full'"):
        DEFENSES.create("emn", restart_init="random", train_mode="lora")


def test_reinitialize_is_seeded(llava):
    llava.reinitialize(3)
    first = {k: v.clone() for k, v in llava.model.state_dict().items()}
    llava.reinitialize(4)
    assert any(not torch.equal(first[k], v) for k, v in llava.model.state_dict().items())
    llava.reinitialize(3)
    assert all(torch.equal(first[k], v) for k, v in llava.model.state_dict().items())


def test_random_trigger_inserts_vocabulary_words_and_no_answer_word(data, llava):
    from toolkit.triggers import words_of

    out = DEFENSES.create("random_trigger", max_trigger_tokens=3, noise=False).protect(data, llava)
    vocab = set(llava.trigger_vocabulary().words)
    answers = set().union(*(words_of(s.answer) for s in data))
    for p, s in zip(out.dataset, data):
        words = p.meta["trigger"]["words"]
        assert len(words) == 3 and set(words) <= vocab and not {w.lower() for w in words} & answers
        assert p.question == " ".join(words) + " " + s.question
        assert np.array_equal(p.image, s.image)  # noise=False: the text-only control changes no pixel
    assert len({tuple(p.meta["trigger"]["words"]) for p in out.dataset}) > 1  # drawn per sample
    noisy = DEFENSES.create("random_trigger", max_trigger_tokens=3).protect(data, llava)
    assert [p.question for p in noisy.dataset] == [p.question for p in out.dataset]  # words independent of noise
    assert any(not np.array_equal(p.image, s.image) for p, s in zip(noisy.dataset, data))


def test_random_trigger_validates(data):
    with pytest.raises(ValueError, match="max_trigger_tokens"):
        DEFENSES.create("random_trigger", max_trigger_tokens=0)
    with pytest.raises(ValueError, match="noise"):
        DEFENSES.create("random_trigger", noise="yes")
    with pytest.raises(ValueError, match="surrogate"):
        DEFENSES.create("random_trigger").protect(data)
