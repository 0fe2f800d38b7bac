import numpy as np
import pytest
import torch

from toolkit import COUNTERMEASURES, FineTune
from toolkit.data import images_to_tensor
from toolkit.engine import make_generator
from toolkit.surrogates import load_surrogate


@pytest.fixture()
def batch(digits_small):
    samples = list(digits_small[0][:8])
    return images_to_tensor([s.image for s in samples]), samples


def test_adversarial_training_inner_step_maximises_loss(llava, batch):
    x, samples = batch
    at = COUNTERMEASURES.create("adversarial_training", eps=8 / 255, steps=5, step_size=2 / 255)
    out = at.batch(llava, x, samples, make_generator(0))
    assert at.stats["loss_after"] > at.stats["loss_before"]
    assert (out - x).abs().max() <= 8 / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert all(p.grad is None for p in llava.model.parameters())


def test_heavy_augmentation_seeded_and_worst_of_picks_highest_loss(llava, batch):
    x, samples = batch
    aug = COUNTERMEASURES.create("heavy_augmentation")
    a = aug.batch(llava, x, samples, make_generator(1))
    b = aug.batch(llava, x, samples, make_generator(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    worst = COUNTERMEASURES.create("heavy_augmentation", worst_of=4)
    w = worst.batch(llava, x, samples, make_generator(2))
    g = make_generator(2)
    cands = [worst._draw(x, g) for _ in range(4)]
    with torch.no_grad():
        losses = torch.stack([llava.loss(c, samples) for c in cands])
        assert torch.allclose(llava.loss(w, samples), losses.max(dim=0).values, atol=1e-5)


def test_training_countermeasures_plug_into_finetune(tiny_llava_dir, digits_small):
    data = digits_small[0][:16]
    for name, cfg in [("adversarial_training", {"steps": 1}), ("heavy_augmentation", {})]:
        victim = load_surrogate(tiny_llava_dir)
        result = FineTune(epochs=1, batch_size=8)(victim, data, countermeasure=COUNTERMEASURES.create(name, **cfg))
        assert result.steps == 2 and np.isfinite(result.epoch_losses).all()
    with pytest.raises(TypeError, match="training-side"):
        COUNTERMEASURES.create("adversarial_training")(data)
    with pytest.raises(TypeError, match="data-side"):
        FineTune(epochs=1)(load_surrogate(tiny_llava_dir), data, countermeasure=COUNTERMEASURES.create("jpeg"))
