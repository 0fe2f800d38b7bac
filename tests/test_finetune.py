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


def test_a_lora_fine_tune_is_reproducible_whatever_the_global_rng(tiny_llava_dir, digits_small):
    """LoRA initialisation and dropout draw from the recipe's seed: two runs from the same weights agree
    exactly although the global RNG differs (before, torch's randomly seeded default generator made every
    run of the attacker's fine-tune a new draw)."""
    from toolkit.surrogates import load_surrogate

    train = digits_small[0][:16]
    recipe = dict(mode="lora", lora_rank=4, lora_dropout=0.1, epochs=2, batch_size=8, lr=1e-3, seed=3)
    losses, weights = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = load_surrogate(tiny_llava_dir)
        state = torch.get_rng_state()
        losses.append(FineTune(**recipe)(model, train).epoch_losses)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is left as it was
        weights.append(torch.cat([p.detach().flatten() for p in model.trainable_parameters("lora")]))
    assert losses[0] == losses[1] and torch.equal(weights[0], weights[1])
    other = load_surrogate(tiny_llava_dir)
    FineTune(**{**recipe, "seed": 4})(other, train)
    assert not torch.equal(torch.cat([p.detach().flatten() for p in other.trainable_parameters("lora")]), weights[0])
