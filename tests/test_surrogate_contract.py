"""Contract every LVLM family adapter must meet, run on each family's tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from toolkit.data import images_to_tensor
from toolkit.surrogates import HFVisionLanguageSurrogate, LoraSettings, load_surrogate
from toolkit.surrogates.processing import region_means
from toolkit.surrogates.tiny import build_tiny, tiny_families

FAMILIES = tiny_families()


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return request.param, build_tiny(request.param, tmp_path_factory.mktemp("contract") / request.param, seed=0)


@pytest.fixture()
def model(family_dir):
    s = load_surrogate(family_dir[1])
    assert isinstance(s, HFVisionLanguageSurrogate)
    return s


def _samples(digits_small, n):
    samples = list(digits_small[0][:n])
    return images_to_tensor([s.image for s in samples]), samples


def _odd_image():
    return np.ascontiguousarray(skdata.chelsea()[40:100:2, 60:150:2])  # 30 x 45, not square


def test_loss_and_input_gradient(model, digits_small):
    x, samples = _samples(digits_small, 3)
    x.requires_grad_(True)
    with model.frozen():
        loss, correct = model.loss_and_correct(x, samples)
        assert loss.shape == (3,) and correct.shape == (3,) and torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in model.model.parameters())


@pytest.mark.parametrize("which", ["digit", "odd"])
def test_processor_matches_real_one(model, digits_small, which):
    image = digits_small[0][0].image if which == "digit" else _odd_image()
    ref = model.reference_inputs([image])
    ours = model.pixel_inputs(images_to_tensor([image]))
    assert set(ours) <= set(ref), f"keys {set(ours) - set(ref)} not produced by the real processor"
    for key, got in ours.items():
        exp = ref[key]
        if not torch.is_floating_point(exp):
            assert torch.equal(got.cpu().to(exp.dtype), exp), key
            continue
        assert got.shape == exp.shape, (key, got.shape, exp.shape)
        # one uint8 level of resampling arithmetic is 1/255 before normalisation (std >= 0.2)
        diff = (got.detach().float().cpu() - exp.float()).abs()
        assert diff.max() <= 2.01 / 255 / 0.2, f"{key}: max diff {diff.max():.4f}"
        assert diff.mean() <= 0.3 / 255 / 0.2, f"{key}: mean diff {diff.mean():.5f}"


@pytest.mark.parametrize("which", ["digit", "odd"])
def test_prompt_ids_match_real_processor(model, digits_small, which):
    image = digits_small[0][0].image if which == "digit" else _odd_image()
    q = digits_small[0][0].question
    batch = model.encode([q], None, image.shape[:2])
    ref = model.reference_input_ids(model.prompt_text(q), image)
    assert batch.input_ids.cpu().tolist() == ref.tolist()


def test_token_positions_and_regions(model, digits_small):
    x, samples = _samples(digits_small, 2)
    h, w = x.shape[-2:]
    batch = model.encode([s.question for s in samples], [s.answer for s in samples], (h, w))
    n_img = model.num_image_tokens(h, w)
    assert batch.image_mask.sum(1).tolist() == [n_img] * 2
    for i, s in enumerate(samples):
        ids = batch.input_ids[i][batch.answer_mask[i]].tolist()
        assert model.tokenizer.decode(ids).strip() == s.answer
        assert batch.answer_mask[i].nonzero().min() > batch.image_mask[i].nonzero().max()
    for hh, ww in [(h, w), (30, 45)]:
        regions = model.image_token_regions(hh, ww)
        assert regions.shape == (model.num_image_tokens(hh, ww), 4)
        assert (regions[:, 0] >= 0).all() and (regions[:, 1] >= 0).all()
        assert (regions[:, 2] <= hh).all() and (regions[:, 3] <= ww).all()
        assert (regions[:, 2] > regions[:, 0]).all() and (regions[:, 3] > regions[:, 1]).all()
        # together the tokens see (nearly) the whole square image; center-crop families drop a
        # non-square image's margins
        cover = torch.zeros(hh, ww)
        for y0, x0, y1, x1 in regions.floor().long().tolist():
            cover[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = 1
        assert cover.mean() > (0.9 if hh == ww else 0.6)


def test_regions_locate_a_perturbed_patch(model):
    """A perturbation confined to one corner lights up the tokens whose regions cover it."""
    h, w = 32, 32
    delta = torch.zeros(1, h, w)
    delta[:, :8, :8] = 1.0
    regions = model.image_token_regions(h, w)
    score = region_means(delta, regions)[0]
    top = regions[score.argmax()]
    assert top[0] < 8 and top[1] < 8


def test_trigger_span_marks_the_inserted_words(model):
    q = "What digit is shown in this image?"
    trig = " zebra lamp"
    at = q.index(" is")
    question = q[:at] + trig + q[at:]
    batch = model.encode([question], ["seven"], (32, 32), trigger_spans=[(at, at + len(trig))])
    ids = batch.input_ids[0][batch.trigger_mask[0]].tolist()
    assert model.tokenizer.decode(ids).strip() == trig.strip()


def test_attentions_and_embedding_grad(model, digits_small):
    x, samples = _samples(digits_small, 2)
    batch = model.encode([s.question for s in samples], [s.answer for s in samples], tuple(x.shape[-2:]))
    with model.frozen():
        out = model.run(x, batch, attention_layers=1, embedding_grad=True)
        out.loss.sum().backward()
    (att,) = out.attentions
    n, length = batch.input_ids.shape
    assert att.ndim == 4 and att.shape[0] == n and att.shape[2:] == (length, length)
    real = batch.attention_mask[0].bool()
    rows = att[0].sum(-1)[:, real]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-3)
    if "image_attention" in model.capabilities:
        a2i = att[:, :, :, :][0][:, batch.answer_mask[0]][:, :, batch.image_mask[0]]
        assert a2i.sum() > 0
    g = out.embeddings.grad
    assert g is not None and g.shape[:2] == (n, length) and torch.isfinite(g).all()
    question_pos = batch.attention_mask.bool() & ~batch.image_mask & ~batch.answer_mask
    assert g[question_pos].abs().sum() > 0
    assert model.embedding_matrix().shape[1] == g.shape[-1]


def test_hooked_attention_maps_match_the_model_output(model, digits_small, monkeypatch):
    """run() hooks the first K self-attention modules; the maps equal the model's own output_attentions
    (the path taken when no module is found), and the hooks are gone afterwards."""
    x, samples = _samples(digits_small, 2)
    batch = model.encode([s.question for s in samples], [s.answer for s in samples], tuple(x.shape[-2:]))
    modules = model.attention_modules()
    assert len(modules) >= 1
    kernel = model.base_model().config._attn_implementation
    with model.frozen(), torch.no_grad():
        hooked = model.run(x, batch, attention_layers=1).attentions
        hooked_again = model.run(x, batch, attention_layers=1).attentions  # the cached eager switch
        assert all(not m._forward_hooks for m in modules)
        assert model.base_model().config._attn_implementation == kernel  # switched back after each call
        assert torch.equal(hooked[0], hooked_again[0])
        monkeypatch.setattr(model, "attention_modules", lambda: [])
        reference = model.run(x, batch, attention_layers=1).attentions
    assert len(hooked) == len(reference) == 1 and torch.equal(hooked[0], reference[0])


def test_shared_image_rows_match_one_image_per_row(model, digits_small):
    """run_shared (rows sharing images, the trigger search's candidates) gives run's losses, attention maps,
    trigger-embedding gradients and pixel gradients. A family that declares ``prefix_cache`` really runs a
    shared prefix, and without embedding gradients the prefix extends over the words an image's rows share
    (the test would catch a claim the family cannot keep, or a silent fallback)."""
    from toolkit.triggers import insert_trigger

    x, samples = _samples(digits_small, 2)
    rows, spans, index = [], [], []
    for j, smp in enumerate(samples):
        for words in (["zebra", "lamp"], ["zebra", "river"], ["zebra", "stone", "paper"]):
            q, span, _ = insert_trigger(smp.question, words if j == 0 else ["cloud"] + words[1:], "start")
            rows.append(smp.with_(question=q))
            spans.append(span)
            index.append(j)
    index = torch.tensor(index)
    with model.frozen():
        px = x.clone().requires_grad_(True)
        ref = model.forward_samples(px[index], rows, spans, attention_layers=1, embedding_grad=True)
        (ref.loss.sum() + ref.answer_nll.sum()).backward()
        py = x.clone().requires_grad_(True)
        got = model.forward_samples(py, rows, spans, attention_layers=1, embedding_grad=True, image_index=index)
        (got.loss.sum() + got.answer_nll.sum()).backward()
        with torch.no_grad():
            grouped = model.forward_samples(x, rows, spans, attention_layers=1, image_index=index)
    off = got.embedding_offset
    assert (off > 0) == model.prefix_cache
    assert (grouped.embedding_offset > off) == model.prefix_cache
    for res in (got, grouped):
        assert torch.allclose(res.loss, ref.loss, atol=1e-5) and torch.allclose(res.answer_nll, ref.answer_nll, atol=1e-5)
        assert torch.allclose(res.attentions[0], ref.attentions[0], atol=1e-6)
    trig = ref.batch.trigger_mask
    g_ref = torch.stack([ref.embeddings.grad[r][trig[r]].sum(0) for r in range(len(rows))])
    g_got = torch.stack([got.embeddings.grad[r][trig[r, off:]].sum(0) for r in range(len(rows))])
    assert g_ref.abs().sum() > 0 and torch.allclose(g_got, g_ref, atol=1e-5)
    assert px.grad.abs().sum() > 0 and torch.allclose(py.grad, px.grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="image_index"):
        model.forward_samples(x, rows, spans, image_index=index[:2])


def test_save_load_roundtrip(model, digits_small, tmp_path):
    x, samples = _samples(digits_small, 2)
    with torch.no_grad():
        before = model.loss(x, samples)
    model.save(tmp_path / "copy")
    again = load_surrogate(tmp_path / "copy")
    with torch.no_grad():
        assert torch.allclose(again.loss(x, samples), before, atol=1e-5)


def test_lora_trains_and_detaches(model, digits_small):
    x, samples = _samples(digits_small, 4)
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    model.attach_lora(LoraSettings(rank=4, alpha=8))
    params = model.trainable_parameters("lora")
    assert params
    opt = torch.optim.AdamW(params, lr=1e-2)
    with model.training(params):
        with torch.no_grad():
            first = model.loss(x, samples).mean()
        for _ in range(4):
            opt.zero_grad()
            model.loss(x, samples).mean().backward()
            opt.step()
        with torch.no_grad():
            assert model.loss(x, samples).mean() < first
    model.detach_lora(merge=False)
    after = model.model.state_dict()
    assert set(after) == set(base) and all(torch.equal(after[k], base[k]) for k in base)


def test_answer_and_bfloat16(model, family_dir, digits_small):
    x, samples = _samples(digits_small, 2)
    out = model.answer(x, [s.question for s in samples], max_new_tokens=2)
    assert len(out) == 2 and all(isinstance(a, str) for a in out)
    bf = load_surrogate(family_dir[1], dtype="bfloat16")
    x.requires_grad_(True)
    with bf.frozen():
        loss = bf.loss(x, samples)
        (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all() and g.abs().sum() > 0


def test_declared_capabilities_keep_their_protocols(model):
    from toolkit.surrogates.capabilities import missing_members

    assert {cap: missing_members(model, cap) for cap in model.capabilities} == \
        {cap: () for cap in model.capabilities}


def test_every_registered_class_implements_what_its_capabilities_promise():
    """Class-level check of every registered family (methods; instance attributes are checked above)."""
    from toolkit.surrogates import SURROGATES
    from toolkit.surrogates.capabilities import missing_members

    SURROGATES.names()
    gaps = {(name, cap): [m for m in missing_members(SURROGATES.get(name), cap) if m != "tokenizer"]
            for name in SURROGATES.names() for cap in SURROGATES.get(name).capabilities}
    assert {k: v for k, v in gaps.items() if v} == {}

    class Half:  # the control: a class that declares lora but cannot detach
        capabilities = frozenset({"lora"})

        def attach_lora(self, settings=None):
            pass

    assert missing_members(Half, "lora") == ("detach_lora",)
