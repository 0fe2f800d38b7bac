import pytest
import torch

from toolkit.data import images_to_tensor
from toolkit.surrogates import CapabilityError, LoraSettings, load_surrogate


def _batch(samples):
    return images_to_tensor([s.image for s in samples]), list(samples)


def test_loss_is_per_sample_finite_with_nonzero_image_gradient(llava, digits_small):
    x, samples = _batch(digits_small[0][:4])
    x.requires_grad_(True)
    with llava.frozen():
        loss = llava.loss(x, samples)
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in llava.model.parameters())  # input gradient only


def test_frozen_restores_requires_grad_and_mode(llava):
    before = [p.requires_grad for p in llava.model.parameters()]
    llava.model.train()
    with llava.frozen():
        assert not any(p.requires_grad for p in llava.model.parameters()) and not llava.model.training
    assert [p.requires_grad for p in llava.model.parameters()] == before and llava.model.training


def test_image_token_expansion_matches_real_processor(llava, digits_small):
    s = digits_small[0][0]
    batch = llava.encode([s.question], None, (32, 32))
    real = llava.processor(text=llava.prompt_text(s.question), images=s.image, return_tensors="pt")
    assert torch.equal(batch.input_ids.cpu(), real["input_ids"])
    assert int(batch.image_mask.sum()) == 16  # (32 / 8) ** 2 patches, CLS dropped


def test_token_positions(llava, digits_small):
    samples = list(digits_small[0][:3])
    batch = llava.encode([s.question for s in samples], [s.answer for s in samples], (32, 32))
    for i, s in enumerate(samples):
        ids = batch.input_ids[i][batch.answer_mask[i]].tolist()
        assert llava.tokenizer.decode(ids).strip() == s.answer
        labelled = batch.labels[i][batch.labels[i] != -100].tolist()
        assert labelled == ids + [llava.tokenizer.eos_token_id]
        assert (batch.input_ids[i][batch.image_mask[i]] == llava.image_token_id).all()
        # answer comes after every image token
        assert batch.answer_mask[i].nonzero().min() > batch.image_mask[i].nonzero().max()


def test_images_of_any_size_are_resized_differentiably(llava, digits_small):
    s = digits_small[0][0]
    big = torch.nn.functional.interpolate(images_to_tensor([s.image]), size=(45, 61), mode="bilinear")
    loss = llava.loss(big, [s])
    assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_answer_returns_strings(llava, digits_small):
    x, samples = _batch(digits_small[1][:3])
    out = llava.answer(x, [s.question for s in samples], max_new_tokens=3)
    assert len(out) == 3 and all(isinstance(a, str) for a in out)


def test_lora_trains_and_detaches_leaving_base_unchanged(llava, digits_small):
    x, samples = _batch(digits_small[0][:8])
    base = {k: v.clone() for k, v in llava.model.state_dict().items()}
    llava.attach_lora(LoraSettings(rank=4, alpha=8))
    params = llava.trainable_parameters("lora")
    ids = {id(p) for p in params}
    names = [n for n, p in llava.model.named_parameters() if id(p) in ids]
    assert params and len(names) == len(params) and all("lora_" in n for n in names)
    opt = torch.optim.AdamW(params, lr=1e-2)
    with llava.training(params):
        first = llava.loss(x, samples).mean()
        for _ in range(5):
            opt.zero_grad()
            loss = llava.loss(x, samples).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        assert llava.loss(x, samples).mean() < first - 1e-3  # the adapter learned something
    llava.detach_lora(merge=False)
    after = llava.model.state_dict()
    assert set(after) == set(base)
    assert all(torch.equal(after[k], base[k]) for k in base)


def test_save_load_roundtrip_identical(llava, digits_small, tmp_path):
    x, samples = _batch(digits_small[0][:3])
    with torch.no_grad():
        before = llava.loss(x, samples)
    llava.save(tmp_path / "copy")
    again = load_surrogate(tmp_path / "copy")
    with torch.no_grad():
        assert torch.allclose(again.loss(x, samples), before, atol=1e-6)


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "fancy_vlm"}')
    with pytest.raises(ValueError, match="fancy_vlm.*supported: .*llava"):
        load_surrogate(tmp_path)


def test_capability_check(llava):
    with pytest.raises(CapabilityError, match="teleport"):
        llava.require("teleport", who="test")


def test_bad_device_and_dtype(tiny_llava_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_surrogate(tiny_llava_dir, dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_surrogate(tiny_llava_dir, device="cuda")


def test_bfloat16_forward(tiny_llava_dir, digits_small):
    s = load_surrogate(tiny_llava_dir, dtype="bfloat16")
    x, samples = _batch(digits_small[0][:2])
    x.requires_grad_(True)
    with s.frozen():
        loss = s.loss(x, samples)
        (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and g.abs().sum() > 0


def test_gradient_checkpointing_acts_in_input_gradient_steps(tiny_llava_dir, digits_small):
    """frozen() with gradient_checkpointing recomputes the decoder layers during backward (the first attention
    module runs twice per step, once without checkpointing) and gives the same loss and input gradient
    (no dropout switched on); the train-mode flags are back to eval afterwards."""
    from toolkit.data import images_to_tensor

    samples = list(digits_small[0][:3])
    x = images_to_tensor([s.image for s in samples])
    results = {}
    for ckpt in (False, True):
        model = load_surrogate(tiny_llava_dir, gradient_checkpointing=ckpt)
        calls = []
        handle = model.attention_modules()[0].register_forward_hook(lambda *_: calls.append(1))
        d = torch.zeros_like(x, requires_grad=True)
        with model.frozen():
            loss = model.loss(x + d, samples).sum()
            (grad,) = torch.autograd.grad(loss, d)
        handle.remove()
        assert not any(m.training for m in model.model.modules())
        results[ckpt] = (len(calls), loss.detach(), grad)
    assert results[False][0] == 1 and results[True][0] == 2
    assert torch.allclose(results[True][1], results[False][1]) and torch.allclose(results[True][2], results[False][2], atol=1e-6)
