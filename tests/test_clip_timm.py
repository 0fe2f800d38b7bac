"""open_clip CLIP and timm classifier surrogates on their tiny models (offline, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from toolkit.data import VQASample, images_to_tensor
from toolkit.digits import DIGIT_WORDS, load_digits_vqa
from toolkit.surrogates import CapabilityError, load_surrogate, model_type_of
from toolkit.surrogates.clip import ClipSurrogate
from toolkit.surrogates.processing import DifferentiableEvalTransform
from toolkit.surrogates.tiny import TINY_BUILDERS
from toolkit.surrogates.tiny.clip import build_tiny_clip
from toolkit.surrogates.tiny.other import OTHER_TINY_BUILDERS, build_tiny_other
from toolkit.surrogates.tiny.timm import build_tiny_timm
from toolkit.surrogates.timm_classifier import TimmSurrogate


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_timm")
    return {"open_clip": build_tiny_clip(root / "clip", seed=0), "timm": build_tiny_timm(root / "timm", seed=0)}


@pytest.fixture(scope="module")
def digits():
    train, _ = load_digits_vqa(image_size=32, limit=30)  # 20 training digits
    samples = list(train)[:16]
    return images_to_tensor([s.image for s in samples]), samples


@pytest.fixture(params=["open_clip", "timm"])
def model(request, folders):
    return load_surrogate(folders[request.param])


def _images():
    digit = load_digits_vqa(image_size=32, limit=20)[0][0].image
    cat = skdata.chelsea()  # 300 x 451
    return {"chelsea": cat, "odd": np.ascontiguousarray(cat[40:100:2, 60:150:2]), "digit": digit}


def _reference_transform(model):
    if isinstance(model, ClipSurrogate):
        from open_clip import image_transform

        cfg = model.preprocess_cfg
        return image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                               resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"],
                               fill_color=cfg["fill_color"])
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model.model), is_training=False)


def test_registry_and_separate_tiny_builders(folders):
    assert model_type_of(folders["open_clip"]) == "open_clip" and model_type_of(folders["timm"]) == "timm"
    assert isinstance(load_surrogate(folders["open_clip"]), ClipSurrogate)
    assert isinstance(load_surrogate(folders["timm"]), TimmSurrogate)
    assert set(OTHER_TINY_BUILDERS) == {"open_clip", "timm"}
    assert not set(OTHER_TINY_BUILDERS) & set(TINY_BUILDERS)  # the LVLM contract tests do not see them
    with pytest.raises(KeyError, match="available"):
        build_tiny_other("nope", "unused")


def test_loss_and_image_gradient_frozen(model, digits):
    x, samples = digits
    x = x[:6].clone().requires_grad_(True)
    with model.frozen():
        loss, correct = model.loss_and_correct(x, samples[:6])
        assert loss.shape == (6,) and correct.shape == (6,) and correct.dtype == torch.bool
        assert torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in model.model.parameters())
    assert model.image_size == (32, 32)


@pytest.mark.parametrize("which", ["chelsea", "odd", "digit"])
def test_preprocessing_matches_library_transform(model, which):
    image = _images()[which]
    ref = _reference_transform(model)(Image.fromarray(image))
    ours = model.pixel_inputs(images_to_tensor([image]))[0]
    assert ours.shape == ref.shape
    std = torch.tensor(model.image_processor.std).view(3, 1, 1)
    levels = (ours - ref).abs() * std * 255  # difference in uint8 levels
    assert levels.max() <= 2.0 + 1e-3, levels.max()
    assert (levels > 0.5).float().mean() < 0.01  # rounding differences only on rare pixels


@pytest.mark.parametrize("mode", ["squash", "longest"])
def test_open_clip_resize_modes(mode):
    from open_clip import image_transform

    cfg = {"size": (24, 40), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25), "interpolation": "bilinear",
           "resize_mode": mode, "fill_color": 9}
    image = _images()["chelsea"]
    ref = image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=mode,
                          interpolation="bilinear", fill_color=9)(Image.fromarray(image))
    ours = DifferentiableEvalTransform.from_open_clip(cfg)(images_to_tensor([image]))[0]
    assert ours.shape == ref.shape
    assert ((ours - ref).abs() * torch.tensor(cfg["std"]).view(3, 1, 1) * 255).max() <= 2.0 + 1e-3


def test_library_loaders_read_the_saved_layout(folders, digits):
    import open_clip
    import timm

    x, _ = digits
    clip = load_surrogate(folders["open_clip"])
    ref = open_clip.create_model(f"local-dir:{folders['open_clip']}").eval()
    pre = clip.pixel_inputs(x[:2])
    with torch.no_grad():
        assert torch.allclose(ref.encode_image(pre), clip.model.encode_image(pre), atol=1e-6)
    clf = load_surrogate(folders["timm"])
    ref = timm.create_model(f"local-dir:{folders['timm']}", pretrained=True).eval()
    pre = clf.pixel_inputs(x[:2])
    with torch.no_grad():
        assert torch.allclose(ref(pre), clf.model(pre), atol=1e-6)


def test_save_load_round_trip(model, digits, tmp_path):
    x, samples = digits
    with torch.no_grad():
        before = model.loss(x[:4], samples[:4])
    again = load_surrogate(model.save(tmp_path / "saved"))
    assert type(again) is type(model)
    with torch.no_grad():
        assert torch.equal(again.loss(x[:4], samples[:4]), before)


def test_training_reduces_loss(model, digits):
    x, samples = digits
    with torch.no_grad():
        start = model.loss(x, samples).mean().item()
    params = model.trainable_parameters("full")
    opt = torch.optim.AdamW(params, lr=1e-3)  # higher rates collapse the tiny CLIP to uniform logits
    torch.manual_seed(0)
    with model.training(params):
        for _ in range(10):
            opt.zero_grad()
            model.loss(x, samples).mean().backward()
            opt.step()
    with torch.no_grad():
        end = model.loss(x, samples).mean().item()
    assert end < start - 0.2, (start, end)


def test_trainable_parameter_modes(model):
    names = {id(p): n for n, p in model.model.named_parameters()}
    proj = sorted(names[id(p)] for p in model.trainable_parameters("projector"))
    if isinstance(model, ClipSurrogate):
        assert proj == ["text_projection", "visual.proj"]
    else:
        assert proj == ["head.bias", "head.weight"]
    assert len(model.trainable_parameters("full")) == len(names)
    with pytest.raises(ValueError, match="LoRA"):
        model.trainable_parameters("lora")
    with pytest.raises(ValueError, match="mode"):
        model.trainable_parameters("everything")


def test_capabilities(folders):
    clip, clf = load_surrogate(folders["open_clip"]), load_surrogate(folders["timm"])
    clip.require("image_grad", "text", "token_grad", "trainable")
    clf.require("image_grad", "trainable")
    for s, missing in ((clip, "lora"), (clip, "generate"), (clf, "lora"), (clf, "text"), (clf, "token_grad")):
        with pytest.raises(CapabilityError, match=missing):
            s.require(missing, who="test")


def test_timm_unknown_answer_and_answers(folders, digits):
    clf = load_surrogate(folders["timm"])
    x, samples = digits
    assert clf.labels == list(DIGIT_WORDS)
    odd = VQASample("x", samples[0].image, samples[0].question, "eleven")
    with pytest.raises(ValueError, match="'eleven'.*'zero', 'one'"):
        clf.loss(x[:1], [odd])
    # answers are matched after strip + lowercase
    upper = VQASample("y", samples[0].image, samples[0].question, f"  {samples[0].answer.upper()} ")
    assert torch.allclose(clf.loss(x[:1], [upper]), clf.loss(x[:1], samples[:1]))
    answers = clf.answer(x[:5], ["ignored"] * 5)
    assert len(answers) == 5 and set(answers) <= set(DIGIT_WORDS)


def test_clip_token_embedding_gradient(folders, digits):
    clip = load_surrogate(folders["open_clip"])
    x, samples = digits
    with clip.frozen():
        loss, tokens, grad = clip.text_embedding_grad(x[:4], samples[:4])
        result = clip.run(x[:4], samples[:4], embedding_grad=True)
        result.loss.sum().backward()
    assert grad.shape == (4, clip.context_length, clip.embedding_matrix().shape[1])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.allclose(result.embeddings.grad, grad, atol=1e-5)
    assert clip.embedding_matrix().shape[0] == 49408
    assert torch.equal(tokens, clip.encode_text_tokens([clip.caption(s) for s in samples[:4]]))
    assert clip.caption(samples[0]) == f"{samples[0].question} {samples[0].answer}"
    assert all(p.grad is None for p in clip.model.parameters())


def test_clip_answer_needs_candidates(folders, digits):
    clip = load_surrogate(folders["open_clip"])
    x, samples = digits
    questions = [s.question for s in samples[:3]]
    with pytest.raises(ValueError, match="candidate"):
        clip.answer(x[:3], questions)
    got = clip.answer(x[:3], questions, candidates=DIGIT_WORDS)
    assert len(got) == 3 and set(got) <= set(DIGIT_WORDS)
    assert clip.answer(x[:2], questions[:2], candidates=[["a"], ["b", "b"]]) == ["a", "b"]
    clip.set_answer_candidates(["seven"])
    assert clip.answer(x[:2], questions[:2]) == ["seven", "seven"]


def test_clip_duplicate_captions_are_positives(folders, digits):
    clip = load_surrogate(folders["open_clip"])
    x, samples = digits
    pair = [samples[0], samples[0]]
    with torch.no_grad():
        result = clip.run(x[[0, 0]], pair)
    # identical images and captions: the targets are uniform, the loss is log 2, both retrieve "their" caption
    assert torch.allclose(result.loss, torch.full((2,), float(np.log(2))), atol=1e-4)
    assert result.correct.all()


def test_reinitialize_is_seeded(model, digits):
    x, samples = digits
    with torch.no_grad():
        before = model.loss(x[:4], samples[:4])
        model.reinitialize(1)
        first = model.loss(x[:4], samples[:4])
        model.reinitialize(1)
        assert torch.equal(model.loss(x[:4], samples[:4]), first)
    assert not torch.equal(first, before)


def test_clip_trigger_tokens(folders, digits):
    from toolkit.triggers import insert_trigger

    clip = load_surrogate(folders["open_clip"])
    x, samples = digits
    vocab = clip.trigger_vocabulary()
    assert len(vocab) > 30000 and "zebra" in vocab.words and all(w.isalpha() and w.islower() for w in vocab.words)
    zebra = vocab.ids[vocab.words.index("zebra")].item()
    rows, spans = [], []
    for s, position in zip(samples[:3], ("start", "end", 2)):
        text, span, words = insert_trigger(s.question, ["zebra", "zebra"], position)
        rows.append(s.with_(question=text))
        spans.append(words[1])  # the second trigger word only
    with clip.frozen():
        res = clip.forward_samples(x[:3], rows, spans, embedding_grad=True)
        res.loss.sum().backward()
    assert res.trigger_mask.shape == res.tokens.shape and res.trigger_mask.sum(1).tolist() == [1, 1, 1]
    assert (res.tokens[res.trigger_mask] == zebra).all()
    assert res.embeddings.grad[res.trigger_mask].abs().sum() > 0
    with pytest.raises(ValueError, match="word boundaries"):
        clip.trigger_token_mask((32, 32), rows[:1], [(spans[0][0] + 1, spans[0][1])])
    with pytest.raises(CapabilityError, match="attentions"):
        clip.forward_samples(x[:2], samples[:2], attention_layers=1)


def test_min_min_defenses_run_on_both(folders):
    from toolkit.defenses.base import DEFENSES

    data = load_digits_vqa(image_size=32, limit=30)[0][:8]
    fast = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8}
    mem = DEFENSES.create("mem", **fast, max_trigger_tokens=2, trigger_candidates=2, trigger_rounds=1)
    protected = mem.protect(data, load_surrogate(folders["open_clip"]))
    assert len(protected.dataset) == len(data)
    stats = protected.info["history"][-1]  # HotFlip screen + exact verification never increases the loss
    assert stats["trigger_loss_after"] <= stats["trigger_loss_before"] + 1e-6
    emn = DEFENSES.create("emn", **fast)
    assert len(emn.protect(data, load_surrogate(folders["timm"])).dataset) == len(data)


def test_clip_trigger_verification_keeps_fixed_batches(folders, digits, monkeypatch):
    """CLIP's contrastive loss couples the rows of a forward, so MEM's trigger verification on CLIP keeps its
    fixed batch_size cuts (regrouping the candidates by sample, as LVLM verification does, would change the
    values and the triggers picked): the whole-sample grouping is never used with a contrastive surrogate."""
    from toolkit import DEFENSES
    from toolkit.defenses.minmin import hotflip

    def grouping(*args, **kwargs):
        raise AssertionError("whole-sample grouping used with a contrastive surrogate")

    monkeypatch.setattr(hotflip, "owner_chunks", grouping)
    from toolkit.data import VQADataset

    data = VQADataset(list(digits[1][:6]), name="clip-mem")
    out = DEFENSES.create("mem", rounds=1, train_steps=1, pgd_steps=1, batch_size=6, pgd_batch_size=5, eval_size=4,
                          max_trigger_tokens=2, trigger_candidates=3).protect(data, [load_surrogate(folders["open_clip"])])
    assert any(s.question != c.question for s, c in zip(out.dataset, data))
