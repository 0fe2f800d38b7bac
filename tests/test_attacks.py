import io

import numpy as np
import pytest
from PIL import Image

from toolkit import COUNTERMEASURES, FineTune
from toolkit.metrics import evaluate_answers
from toolkit.surrogates import load_surrogate


def test_jpeg_byte_identical_to_pillow(digits_small):
    data = digits_small[0][:5]
    out = COUNTERMEASURES.create("jpeg", quality=30)(data)
    for s, t in zip(data, out):
        buf = io.BytesIO()
        Image.fromarray(s.image).save(buf, format="JPEG", quality=30)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(ref, t.image)
        assert t.answer == s.answer and t.id == s.id


def test_jpeg_changes_noisy_images_and_keeps_inputs():
    rng = np.random.default_rng(0)
    from toolkit.data import VQADataset, VQASample

    ds = VQADataset([VQASample("a", rng.integers(0, 255, (16, 16, 3)).astype(np.uint8), "q", "x")])
    before = ds[0].image.copy()
    out = COUNTERMEASURES.create("jpeg", quality=10)(ds)
    assert not np.array_equal(out[0].image, before) and np.array_equal(ds[0].image, before)


@pytest.mark.parametrize("q", [0, 100, 5.5])
def test_jpeg_quality_validated(q):
    with pytest.raises(ValueError, match="quality"):
        COUNTERMEASURES.create("jpeg", quality=q)


@pytest.mark.parametrize("mode", ["full", "lora", "projector"])
def test_finetune_lowers_training_loss(mode, tiny_llava_dir, digits_small):
    victim = load_surrogate(tiny_llava_dir)
    train = digits_small[0][:32]
    result = FineTune(mode=mode, epochs=4, batch_size=16, lr=5e-3)(victim, train)
    assert result.steps == 8 and len(result.epoch_losses) == 4
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    if mode == "lora":
        assert victim.lora_active


def test_finetune_config_validated():
    with pytest.raises(ValueError, match="mode"):
        FineTune(mode="everything")
    with pytest.raises(TypeError, match="unknown config key"):
        FineTune(epoch=3)


def test_finetune_and_evaluate_mixed_sizes(tiny_llava_dir, digits_small):
    from toolkit.data import VQADataset

    data = digits_small[0][:8]
    mixed = VQADataset([s.with_(image=np.asarray(Image.fromarray(s.image).resize((40, 36)))) if i % 2 else s
                        for i, s in enumerate(data)], "mixed")
    victim = load_surrogate(tiny_llava_dir)
    result = FineTune(epochs=1, batch_size=4)(victim, mixed)
    assert result.steps == 2
    acc, preds = evaluate_answers(victim, mixed)
    assert len(preds) == 8 and 0.0 <= acc <= 1.0
