"""FineTune recipe options: warm-up schedule, LoRA with a trained projector, config errors."""
import math

import pytest
import torch

from toolkit.attacks.finetune import FineTune, learning_rate_schedule


def _rates(schedule, total, warmup):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = learning_rate_schedule(opt, schedule, total, warmup)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return rates


def test_warmup_rises_linearly_then_cosine_decays():
    rates = _rates("cosine", 100, 0.1)
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(rates[:9], rates[1:10]))
    assert rates[10] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert rates[-1] < 0.01


def test_no_warmup_keeps_torch_cosine_and_constant():
    assert _rates("cosine", 50, 0.0)[25] == pytest.approx(0.5, abs=1e-6)
    assert set(_rates("constant", 20, 0.0)) == {1.0}
    assert _rates("constant", 20, 0.25)[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_lora_projector_trains_projector_and_adapters_only(llava, digits_small):
    train, _ = digits_small
    before = {n: p.detach().clone() for n, p in llava.model.named_parameters()}
    FineTune(mode="lora", lora_projector=True, epochs=1, lr=1e-2, batch_size=16)(llava, train)
    after = dict(llava.model.named_parameters())
    changed = {n for n, p in before.items() for m, q in after.items()
               if m.endswith(n.split("model.", 1)[-1]) and "lora_" not in m and not torch.equal(p, q.detach())}
    assert changed and all("multi_modal_projector" in n for n in changed)
    assert any("lora_" in n for n in after)


@pytest.mark.parametrize("bad", [{"warmup": 1.0}, {"warmup": -0.1}, {"mode": "full", "lora_projector": True},
                                 {"mode": "projector", "lora_target": "q_proj"}])
def test_bad_recipe_options_are_refused(bad):
    with pytest.raises(ValueError):
        FineTune(**bad)
