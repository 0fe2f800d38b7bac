"""MMGuard: binding losses moving attention, CRS sign, -Max variants, triggers in the release."""
import json

import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.surrogates.base import CapabilityError
from toolkit.defenses.minmin import MinMinRun, Perturbation, answer_classes
from toolkit.defenses.mmguard import MMGUARD_VARIANTS, MMGuard
from toolkit.engine import gather, make_generator
from toolkit.metrics import mechanism_metrics
from toolkit.release import write_release
from toolkit.triggers import admissible_vocabulary


def test_every_variant_registered():
    assert {f"mmguard_{v}" for v in MMGUARD_VARIANTS} <= set(DEFENSES.names())
    assert len(MMGUARD_VARIANTS) == 7


def _setup(name, data, surrogate, **cfg):
    defense = DEFENSES.create(name, **{"max_trigger_tokens": 2, "pgd_batch_size": 16, **cfg})
    run = defense.begin(data, [surrogate])
    return defense, run.pert, run


def _released(pert):
    out = []
    for i, s in enumerate(pert.samples):
        img = (pert.pixels(torch.tensor([i]))[0].permute(1, 2, 0) * 255).round().byte().numpy()
        text, span = pert.question(i)
        meta = {"trigger": {"span": list(span)}} if span else {}
        out.append(s.with_(image=img, question=text, meta=meta))
    return out


def test_bph_moves_attention_mass_toward_targets(digits_small, llava):
    data = list(digits_small[0][:8])
    defense, pert, run = _setup("mmguard_bph", data, llava, lambda_train=0.0, pgd_steps=10, tau_delta=0.25)
    with llava.frozen():
        before = mechanism_metrics(llava, data, _released(pert), tau_delta=0.25)
        defense.image_step(run)  # the image step moves answer and trigger mass to Omega_delta
        mid = mechanism_metrics(llava, data, _released(pert), tau_delta=0.25)
        run.new_step()
        defense.trigger_pass(run, torch.arange(len(data)), 64, batch_size=16)  # on l_joint (trigger_objective)
        after = mechanism_metrics(llava, data, _released(pert), tau_delta=0.25)  # the trigger pass: to Omega_gamma
    assert mid["mass_answer_to_perturbation"][0] > before["mass_answer_to_perturbation"][0]
    assert mid["mass_trigger_to_perturbation"][0] > before["mass_trigger_to_perturbation"][0]
    # one-token trigger words (the paper's budget) leave fewer candidates than the old word rule, whose split
    # words also counted two tokens of mass: the gain is ~6% relative here (+0.004), ~17% under the old rule
    assert after["mass_answer_to_trigger"][0] > 1.03 * mid["mass_answer_to_trigger"][0]
    assert after["eta"] < mid["eta"]
    assert after["bound_holds"] == 1.0


class _FlippedCRS(MMGuard):
    variant = "crs"

    def joint_loss(self, *args, **kwargs):
        loss, res = super().joint_loss(*args, **kwargs)
        return -loss, res  # minimise +KL: pull protected routing back to the clean one


def test_crs_increases_tv_and_flipped_sign_decreases_it(digits_small, llava):
    data = list(digits_small[0][:8])
    cfg = {"lambda_train": 0.0, "pgd_steps": 10, "pgd_batch_size": 16}
    crs, flipped = DEFENSES.create("mmguard_crs", **cfg), _FlippedCRS(**cfg)
    gen = make_generator(0)
    labels, c = answer_classes(data, 0, [llava], gen)
    pert = Perturbation(data, labels, c, "sample", crs.config.eps, "zeros", gen)
    run = MinMinRun([llava], pert, gen)
    with llava.frozen():
        start = mechanism_metrics(llava, data, _released(pert))["tv"]
        crs.image_step(run)
        pushed = mechanism_metrics(llava, data, _released(pert))["tv"]
        run.new_step()
        flipped.image_step(run)
        pulled = mechanism_metrics(llava, data, _released(pert))["tv"]
    assert start == pytest.approx(0.0, abs=1e-6)  # no delta, no trigger: same routing
    assert pushed > 1e-4
    assert pulled < pushed


def test_crs_memoised_clean_pass_gives_the_same_loss(digits_small, llava):
    """Inside a step CRS reuses each sample's clean pass across batches of any composition (a trigger pass
    verifies many candidates per sample); the loss must equal the one computed from a fresh clean pass."""
    data = list(digits_small[0][:6])
    defense, pert, _ = _setup("mmguard_crs", data, llava)
    items = [0, 3, 3, 5, 1, 0]  # repeated items, as in a batch of trigger candidates
    idx = torch.tensor(items)
    samples, spans = pert.batch_samples(idx)
    x, clean = gather(pert.x, idx), [pert.samples[i] for i in items]
    pixels = pert.pixels(idx)
    with llava.frozen():
        fresh, _ = defense.joint_loss(llava, pixels, samples, spans, pert.deltas(idx), x, clean)
        memo = {}
        defense.joint_loss(llava, pixels[:2], samples[:2], spans[:2], pert.deltas(idx[:2]), x[:2], clean[:2],
                           items=items[:2], memo=memo)  # fills the memo for items 0 and 3 from another batch
        assert len(memo) == 2
        memoised, _ = defense.joint_loss(llava, pixels, samples, spans, pert.deltas(idx), x, clean, items=items,
                                         memo=memo)
    assert torch.allclose(fresh, memoised, atol=1e-5)
    assert fresh.abs().sum() > 0


def test_max_variant_flips_the_training_term(digits_small, llava):
    data = list(digits_small[0][:4])
    plain, pert, _ = _setup("mmguard_bph", data, llava, lambda_bind=0.0)
    flipped, _, _ = _setup("mmguard_bph_max", data, llava, lambda_bind=0.0)
    idx = torch.arange(len(data))
    samples, spans = pert.batch_samples(idx)
    with torch.no_grad():
        a, _ = plain.joint_loss(llava, pert.pixels(idx), samples, spans, pert.deltas(idx), None, None)
        b, _ = flipped.joint_loss(llava, pert.pixels(idx), samples, spans, pert.deltas(idx), None, None)
    assert torch.allclose(a, -b) and (a > 0).all()


def test_release_records_triggers_and_keeps_answers(digits_small, llava, tmp_path):
    data = digits_small[0][:6]
    out = DEFENSES.create("mmguard_crs", rounds=1, pgd_steps=1, max_trigger_tokens=3, trigger_candidates=4,
                          pgd_batch_size=8, batch_size=8, eval_size=6).protect(data, [llava])
    vocab = set(admissible_vocabulary(llava.tokenizer).words)
    answers = {s.answer.lower() for s in data}
    template = {w.lower() for w in llava.prompt_text("").split()}
    for src, prot in zip(data, out.dataset):
        words = prot.meta["trigger"]["words"]
        assert 1 <= len(words) <= 3 and set(words) <= vocab
        assert not {w.lower() for w in words} & answers  # no label in the trigger
        assert not {w.lower() for w in words} & {"user", "assistant"} and "assistant:" in template
        assert prot.answer == src.answer and src.question in prot.question
    folder = write_release(out, tmp_path / "release")
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert all(r["trigger"]["position"] == "start" and r["trigger"]["words"] for r in rows)


def test_bph_needs_image_attention(digits_small, llava):
    class NoImageAttention(type(llava)):
        capabilities = type(llava).capabilities - {"image_attention"}

    blind = NoImageAttention.__new__(NoImageAttention)
    blind.__dict__.update(llava.__dict__)
    with pytest.raises(CapabilityError, match="image_attention"):
        DEFENSES.create("mmguard_bph", rounds=1).protect(digits_small[0][:4], [blind])


def test_text_variant_leaves_images_untouched(digits_small, llava):
    data = digits_small[0][:4]
    out = DEFENSES.create("mmguard_text", rounds=1, max_trigger_tokens=2, trigger_candidates=3, pgd_batch_size=8,
                          batch_size=8, eval_size=4).protect(data, [llava])
    assert all(np.array_equal(p.image, s.image) for p, s in zip(out.dataset, data))
    assert all(p.question != s.question for p, s in zip(out.dataset, data))


def test_training_term_is_eq_12_a_sum_over_the_answer_tokens(digits_small, llava):
    """l_train (Eq. 12) = the answer's token NLLs summed, end-of-sequence excluded; 'mean' keeps the old loss."""
    data = list(digits_small[0][:4])
    samples = [s.with_(answer=a) for s, a in zip(data, ["seven", "two three", "nine", "one one one"])]
    px = torch.stack([torch.as_tensor(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    batch = llava.encode([s.question for s in samples], [s.answer for s in samples], tuple(px.shape[-2:]))
    with torch.no_grad():
        res = llava.run(px, batch)
        logp = llava.forward(px, batch).logits.float().log_softmax(-1)
    eos = llava.tokenizer.eos_token_id
    by_hand = torch.zeros(len(samples))
    for i in range(len(samples)):
        for t in range(batch.labels.shape[1] - 1):
            y = int(batch.labels[i, t + 1])
            if y != -100 and y != eos:
                by_hand[i] -= logp[i, t, y]
    assert torch.allclose(res.answer_nll, by_hand, atol=1e-4)
    n_scored = (batch.labels[:, 1:] != -100).sum(1)
    assert not torch.allclose(res.answer_nll, res.loss) and (n_scored > 2).any()
    paper = DEFENSES.create("mmguard_multimodal", lambda_bind=0.0)
    old = DEFENSES.create("mmguard_multimodal", lambda_bind=0.0, train_loss="mean")
    with torch.no_grad():
        a, _ = paper.joint_loss(llava, px, samples, [None] * 4, torch.zeros_like(px), None, None)
        b, _ = old.joint_loss(llava, px, samples, [None] * 4, torch.zeros_like(px), None, None)
    assert torch.allclose(a, by_hand, atol=1e-4) and torch.allclose(b, res.loss, atol=1e-5)


def test_image_only_mmguard_needs_no_token_gradients_or_attentions(digits_small, tmp_path):
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny.clip import build_tiny_clip

    image = DEFENSES.create("mmguard_image")
    assert set(image.requires) == {"image_grad", "trainable", "text", "lora"}  # lora: the paper's inner adaptation
    assert {"token_grad", "attentions", "image_attention"} <= set(DEFENSES.create("mmguard_bph").requires)
    assert "attentions" not in DEFENSES.create("mmguard_multimodal").requires  # no binding term, no attentions
    clip = load_surrogate(build_tiny_clip(tmp_path / "clip", seed=0))  # no attentions: refused before
    data = digits_small[0][:6]
    with pytest.raises(ValueError, match="train_loss='sum' needs per-token answer NLL"):
        DEFENSES.create("mmguard_image", rounds=1, pgd_steps=1, batch_size=6, pgd_batch_size=6, eval_size=6,
                        train_mode="full").protect(data, [clip])
    with pytest.raises(CapabilityError, match="lora"):  # a LoRA inner adaptation needs a LoRA-capable surrogate
        DEFENSES.create("mmguard_image", train_loss="mean").protect(data, [clip])
    out = DEFENSES.create("mmguard_image", rounds=1, pgd_steps=1, batch_size=6, pgd_batch_size=6, eval_size=6,
                          train_loss="mean", train_mode="full").protect(data, [clip])
    assert any((p.image != s.image).any() for p, s in zip(out.dataset, data))


def test_component_ablations_by_config(digits_small, llava):
    data = digits_small[0][:6]
    fast = dict(rounds=1, pgd_steps=1, max_trigger_tokens=2, trigger_candidates=2, pgd_batch_size=8, batch_size=8,
                eval_size=6)
    no_trigger = DEFENSES.create("mmguard_bph", text_trigger=False, **fast)
    assert "token_grad" not in no_trigger.requires
    out = no_trigger.protect(data, [llava])
    assert all(p.question == s.question for p, s in zip(out.dataset, data))  # image only
    assert any((p.image != s.image).any() for p, s in zip(out.dataset, data))
    no_delta = DEFENSES.create("mmguard_bph", image_perturbation=False, **fast)
    assert no_delta.config.pgd_steps == 0
    out = no_delta.protect(data, [llava])
    assert all((p.image == s.image).all() for p, s in zip(out.dataset, data))  # trigger only
    assert all(p.question != s.question for p, s in zip(out.dataset, data))
    with pytest.raises(ValueError, match="both off"):
        DEFENSES.create("mmguard_bph", image_perturbation=False, text_trigger=False)


def _start_triggers(name, data, llava):
    _, pert, _ = _setup(name, data, llava, pgd_batch_size=4, trigger_candidates=6)
    return [list(t) for t in pert.triggers]


def test_verification_chunking_changes_no_trigger(digits_small, llava, monkeypatch):
    """A pass verifying its candidates in forwards of 4 x batch_size rows (the default token budget, short
    sequences) picks exactly the triggers it picks verifying batch_size rows at a time (budget 1): rows
    share only the image prefix, never a value. BPH and CRS, against the start triggers as a control."""
    from toolkit.defenses.minmin import hotflip

    data = list(digits_small[0][:12])
    default = hotflip.VERIFY_TOKENS
    assert hotflip.verify_rows(4, 36, False) == 16 and hotflip.verify_rows(4, 36, True) == 4  # contrastive: whole
    for name in ("mmguard_bph", "mmguard_crs"):
        picks = {}
        for budget in (default, 1):
            monkeypatch.setattr(hotflip, "VERIFY_TOKENS", budget)
            defense, pert, run = _setup(name, data, llava, pgd_batch_size=4, trigger_candidates=6)
            start = [list(t) for t in pert.triggers]
            with llava.frozen():
                defense.trigger_pass(run, torch.arange(len(data)), 6, batch_size=4)
            picks[budget] = [list(t) for t in pert.triggers]
        assert picks[1] == picks[default] and picks[1] != start


def test_owner_chunks_cover_the_jobs_with_whole_samples():
    """Verification forwards: contiguous, covering, at most ``limit`` rows, and a sample's candidates split over
    two forwards only when they alone exceed the limit (else its shared prefix would run twice)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from toolkit.defenses.minmin.hotflip import owner_chunks

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(1, 9), max_size=12), st.integers(1, 20))
    def check(runs, limit):
        owners = [r for r, size in enumerate(runs) for _ in range(size)]
        bounds = owner_chunks(owners, limit)
        assert [b for _, b in bounds[:-1]] == [a for a, _ in bounds[1:]] and (not owners or bounds[-1][1] == len(owners))
        assert all(0 < b - a <= limit for a, b in bounds)
        for r, size in enumerate(runs):
            touching = [(a, b) for a, b in bounds if r in owners[a:b]]
            assert len(touching) == 1 or size > limit
    check()
