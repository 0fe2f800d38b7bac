"""Per-sample cost of one round of every registered defense (tiny LLaVA, 32 digits, CPU).

Each defense runs ONE round with one surrogate training step and one PGD step
(and, for trigger defenses, one HotFlip pass with 8 candidates per slot and a
5-word trigger), so the numbers compare the per-round machinery. ``extra_info``
holds seconds per sample and the ratio to one bare input-gradient
forward+backward per sample of the same surrogate (MMGuard's cost model:
O(R * n * M * (Q + 1) * C_LVLM) plus the trigger search).
"""
import statistics
import time

import pytest
import torch

from toolkit import DEFENSES

from _timing import median_seconds

ROUND = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 32, "pgd_batch_size": 32, "eval_size": 8}
TRIGGER = {"max_trigger_tokens": 5, "trigger_candidates": 8}
EXTRA = {"mem": {**TRIGGER, "trigger_rounds": 1}, "rem": {"adv_steps": 1}}


def _config(name):
    from toolkit.defenses import MinMinDefense

    if not issubclass(DEFENSES.get(name), MinMinDefense):  # random noise / random trigger: nothing per round
        return {}
    cfg = {**ROUND, **EXTRA.get(name, {})}
    if name.startswith("mmguard"):
        cfg.update(TRIGGER)
    if name.endswith("_fluent"):  # digits ask one templated question: no trigger word can pass a filter fitted on it
        cfg["filter_aware"] = False
    return cfg


@pytest.fixture(scope="module")
def bare_per_sample(llava, batch):
    x, samples = batch[0][:32], batch[1][:32]
    times = []
    with llava.frozen():
        for _ in range(4):
            d = torch.zeros_like(x, requires_grad=True)
            t0 = time.perf_counter()
            torch.autograd.grad(llava.loss(x + d, samples).sum(), d)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) / len(samples)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_round_cost(benchmark, name, llava, batch, bare_per_sample):
    from toolkit.data import VQADataset

    data = VQADataset(list(batch[1][:32]), name="bench")
    defense = DEFENSES.create(name, **_config(name))
    surrogates = [llava] if defense.needs_surrogate else []
    out = benchmark.pedantic(defense.protect, args=(data, surrogates), rounds=1, iterations=1)
    assert len(out.dataset) == len(data)
    assert max(int(abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in zip(out.dataset, data)) <= 8
    if name != "mmguard_text":  # every defense but the text-only variant perturbs the pixels in one round
        assert any((a.image != b.image).any() for a, b in zip(out.dataset, data))
    median = median_seconds(benchmark)
    if median is not None:
        per_sample = median / len(data)
        benchmark.extra_info["seconds_per_sample_round"] = per_sample
        benchmark.extra_info["ratio_to_bare_forward_backward"] = per_sample / bare_per_sample
        print(f"\n{name}: {per_sample * 1e3:.2f} ms per sample per round = "
              f"{per_sample / bare_per_sample:.1f} x bare forward+backward")
