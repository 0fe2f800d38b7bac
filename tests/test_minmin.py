"""The min-min engine: resume, trigger passes, TUE's separability term, answer clusters."""
import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.surrogates.base import CapabilityError
from toolkit.checkpoint import CheckpointMismatch
from toolkit.defenses.minmin import MinMinDefense, answer_classes
from toolkit.defenses.tue import class_separability
from toolkit.engine import make_generator
from toolkit.triggers import admissible_vocabulary, insert_trigger

SMALL = {"rounds": 3, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
         "stop_accuracy": 1.0, "stop_clean_accuracy": 0.0}
EXTRA = {"emn": {}, "tue": {}, "rem": {"adv_steps": 1},
         "mem": {"max_trigger_tokens": 2, "trigger_candidates": 3, "trigger_rounds": 2},
         "emn_lora": {"train_mode": "lora", "lora_rank": 2},
         "mmguard_bph": {"max_trigger_tokens": 2, "trigger_candidates": 3, "train_steps": 1},
         "mmguard_crs": {"max_trigger_tokens": 2, "trigger_candidates": 3, "train_steps": 1}}
NAMES = {"emn_lora": "emn"}


@pytest.fixture()
def data(digits_small):
    return digits_small[0][:10]


def _same(a, b):
    return all(np.array_equal(x.image, y.image) and x.question == y.question for x, y in zip(a.dataset, b.dataset))


@pytest.mark.parametrize("key", sorted(EXTRA))
def test_resume_equals_uninterrupted(key, data, llava, tmp_path, crash_then_resume):
    name = NAMES.get(key, key)
    make = lambda: DEFENSES.create(name, **{**SMALL, **EXTRA[key]})  # noqa: E731
    full = make().protect(data, [llava])
    ckpt = tmp_path / "run.pt"
    resumed = crash_then_resume(make, data, [llava], ckpt)
    assert resumed.info["rounds"] == full.info["rounds"] == 3
    assert _same(full, resumed)
    assert [h["loss"] for h in resumed.info["history"]] == pytest.approx([h["loss"] for h in full.info["history"]])
    # a finished checkpoint is reused without recomputation; another config is refused
    again = make().protect(data, [llava], checkpoint=ckpt)
    assert _same(full, again)
    with pytest.raises(CheckpointMismatch):
        DEFENSES.create(name, **{**SMALL, **EXTRA[key], "seed": 5}).protect(data, [llava], checkpoint=ckpt)


def test_interrupted_without_checkpoint_differs_from_nothing(data, llava):
    """Guard against a resume test that passes trivially: other seeds give other noise."""
    a = DEFENSES.create("emn", **SMALL).protect(data, [llava])
    b = DEFENSES.create("emn", **{**SMALL, "seed": 3}).protect(data, [llava])
    assert not _same(a, b)


def test_mem_triggers_admissible_and_within_length(data, llava):
    out = DEFENSES.create("mem", **{**SMALL, **EXTRA["mem"], "max_trigger_tokens": 3}).protect(data, [llava])
    vocab = set(admissible_vocabulary(llava.tokenizer).words)
    for src, prot in zip(data, out.dataset):
        trig = prot.meta["trigger"]
        assert 1 <= len(trig["words"]) <= 3
        assert all(w in vocab and w.isascii() and w.isalpha() for w in trig["words"])
        assert prot.question == insert_trigger(src.question, trig["words"], "start")[0]
        assert prot.answer == src.answer
        start, end = trig["span"]
        assert prot.question[start:end] == " ".join(trig["words"])


def test_trigger_pass_never_increases_the_loss(data, llava):
    defense = DEFENSES.create("mem", **{**SMALL, **EXTRA["mem"], "max_trigger_tokens": 2, "trigger_candidates": 8})
    run = defense.begin(data, [llava])
    pert = run.pert
    before = [list(t) for t in pert.triggers]
    with llava.frozen():
        stats = defense.trigger_pass(run, torch.arange(len(data)), candidates=8, batch_size=16)
    assert run.stats["trigger_changed"] == stats["changed"]  # recorded for the round's history
    assert stats["loss_after"] <= stats["loss_before"] + 1e-6
    assert stats["changed"] > 0 and pert.triggers != before
    # verify on fresh forwards that the new triggers really lower the answer loss
    with torch.no_grad():
        px = pert.pixels(torch.arange(len(data)))
        new = llava.loss(px, pert.batch_samples(torch.arange(len(data)))[0]).mean()
        pert.triggers = before
        old = llava.loss(px, pert.batch_samples(torch.arange(len(data)))[0]).mean()
    assert new < old


def test_class_separability_hand_computed():
    d = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # mu0 = (1, 0), s0 = 1; mu1 = (10, 1), s1 = 1; ||mu0 - mu1|| = sqrt(82)
    expected = (2 + 1e-5) / (82 ** 0.5 + 1e-5)
    assert class_separability(d, labels).item() == pytest.approx(expected, rel=1e-5)
    assert class_separability(d, torch.zeros(4, dtype=torch.long)).item() == 0.0


def test_tue_makes_noise_more_separable_than_emn(data, llava):
    cfg = {**SMALL, "rounds": 2, "pgd_steps": 5}
    emn = DEFENSES.create("emn", **cfg).protect(data, [llava])
    tue = DEFENSES.create("tue", **cfg, csd_weight=5.0).protect(data, [llava])
    labels = torch.tensor([sorted({s.answer for s in data}).index(s.answer) for s in data])

    def csd(p):
        return class_separability(torch.tensor(np.stack(p.deltas())).flatten(1), labels).item()
    assert csd(tue) < csd(emn)


def test_answer_clusters(data, llava):
    labels, c = answer_classes(list(data), 3, [llava], make_generator(0))
    assert c == 3 and labels.max() < 3 and labels.min() >= 0
    same = {}
    for s, lab in zip(data, labels.tolist()):
        assert same.setdefault(s.answer, lab) == lab  # one cluster per answer
    out = DEFENSES.create("emn", **{**SMALL, "granularity": "class", "answer_clusters": 3}).protect(data, [llava])
    deltas, eps = out.deltas(), 8 / 255
    interior = [(s.image > 9) & (s.image < 246) for s in data]  # pixels where [0, 1] clipping cannot bite
    for i in range(len(data)):
        for j in range(i + 1, len(data)):
            both = interior[i] & interior[j]
            if labels[i] == labels[j] and both.any():  # one shared pattern per cluster (uint8 rounding aside)
                assert np.abs(deltas[i] - deltas[j])[both].max() <= 1.01 / 255
    assert max(np.abs(d).max() for d in deltas) <= eps + 1e-6


def test_capability_error_names_missing(data, llava):
    class Blind(type(llava)):
        capabilities = frozenset({"image_grad", "trainable"})

    blind = Blind.__new__(Blind)
    blind.__dict__.update(llava.__dict__)
    with pytest.raises(CapabilityError, match="token_grad|text"):
        DEFENSES.create("mem", **SMALL).protect(data, [blind])


@pytest.mark.parametrize("name", ["mem", "mmguard_crs"])
def test_hooks_keep_no_run_state_on_the_defense(name, data, llava):
    """Hooks receive the run (MinMinRun); after a protection the defense holds only its settings."""
    defense = DEFENSES.create(name, **{**SMALL, "rounds": 1, "max_trigger_tokens": 2, "trigger_candidates": 2})
    before = set(vars(defense))
    out = defense.protect(data, [llava])
    assert set(vars(defense)) == before
    assert "trigger_changed" in out.info["history"][0]  # the trigger pass's counts land in the history


def _record_training(monkeypatch):
    """Patch the train_pixels hook to record, per call, the trained surrogate and the sample ids."""
    seen = []

    def record(self, run, surrogate, pixels, samples):
        seen.append((surrogate, [s.id for s in samples]))
        return pixels

    monkeypatch.setattr(MinMinDefense, "train_pixels", record)
    return seen


@pytest.mark.parametrize("q", [1, 2])
def test_q_passes_train_on_every_sample_q_times_per_round(q, data, llava, monkeypatch):
    from collections import Counter

    seen = _record_training(monkeypatch)
    cfg = {**SMALL, "rounds": 2, "train_steps": q, "train_unit": "passes", "batch_size": 3, "pgd_steps": 1}
    DEFENSES.create("emn", **cfg).protect(data, [llava])
    counts = Counter(i for _, ids in seen for i in ids)
    assert counts == Counter({s.id: 2 * q for s in data})  # every sample, Q times in each of the 2 rounds
    assert max(len(ids) for _, ids in seen) <= 3
    seen.clear()
    DEFENSES.create("emn", **{**cfg, "train_unit": "steps"}).protect(data, [llava])
    assert len(seen) == 2 * q and sum(len(ids) for _, ids in seen) < 2 * q * len(data)  # steps: Q batches a round


def test_mmguard_defaults_adapt_one_pass_at_the_papers_batch():
    cfg = DEFENSES.create("mmguard_bph").config
    assert (cfg.train_unit, cfg.train_steps, cfg.batch_size, cfg.restart_every) == ("passes", 1, 2, 1)
    assert DEFENSES.create("emn").config.train_unit == "steps"  # EMN keeps its own schedule


def test_lora_rank_per_surrogate(data, tiny_llava_dir, monkeypatch):
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.ensemble import Ensemble

    a, b = load_surrogate(tiny_llava_dir), load_surrogate(tiny_llava_dir)
    seen = _record_training(monkeypatch)

    def ranks(surrogate):  # LoRA A is (r, in), B is (out, r): the smallest dimension is the rank here
        members = getattr(surrogate, "members", [surrogate])
        return [min(min(p.shape) for p in m.trainable_parameters("lora")) for m in members]

    monkeypatch.setattr(MinMinDefense, "train_pixels",
                        lambda self, run, s, px, smp: (seen.append(ranks(s)), px)[1])
    cfg = {**SMALL, "rounds": 1, "train_steps": 1, "pgd_steps": 1, "train_mode": "lora"}
    DEFENSES.create("emn", **cfg, lora_rank=[2, 4]).protect(data, [a, b])
    assert seen == [[2], [4]]
    seen.clear()
    DEFENSES.create("emn", **cfg, lora_rank=[4, 2]).protect(data, [Ensemble([a, b])])
    assert seen == [[4, 2]]
    seen.clear()
    DEFENSES.create("emn", **cfg, lora_rank=3).protect(data, [a, b])
    assert seen == [[3], [3]]
    with pytest.raises(ValueError, match="lora_rank lists 3 ranks for 2"):
        DEFENSES.create("emn", **cfg, lora_rank=[2, 2, 2]).protect(data, [a, b])


@pytest.mark.parametrize("bad", [{"lora_rank": []}, {"lora_rank": [2, 0]}, {"lora_rank": [2.5]},
                                 {"lora_rank": True}, {"train_unit": "epochs"}])
def test_bad_inner_settings(bad):
    with pytest.raises(ValueError):
        DEFENSES.create("emn", **bad)


def test_pixels_on_the_bounds_still_move(data, llava):
    """torch gives clamp a zero gradient exactly on 0 and 1; objectives use a straight-through clamp, so a
    black clean pixel with a zero start still gets a gradient and the sign step moves it (digits are mostly
    black: with the plain clamp almost none of those pixels would ever change)."""
    from toolkit.engine import clamp_pixels

    t = torch.tensor([0.0, 1.0, 0.5, -0.2], requires_grad=True)
    clamp_pixels(t).sum().backward()
    assert t.grad.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert clamp_pixels(t).tolist() == [0.0, 1.0, 0.5, 0.0]
    out = DEFENSES.create("emn", **{**SMALL, "rounds": 1, "init": "zeros"}).protect(data, [llava])
    black = np.stack([s.image for s in data]) == 0
    moved = np.stack([s.image for s in out.dataset]) != np.stack([s.image for s in data])
    assert black.mean() > 0.3 and moved[black].mean() > 0.3
