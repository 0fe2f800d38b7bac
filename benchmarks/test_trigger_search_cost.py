"""One MMGuard round per sample vs one bare forward+backward per sample, at two sequence geometries.

``tiny``: the benchmark LLaVA (16 image tokens of a ~36-token sequence, like test_defense_cost.py);
``long-prefix``: the same tiny language model behind a vision tower that emits 400 image tokens (160 x 160
input, patch 8), the share of the sequence LLaVA-1.5's 576 image tokens take, so the trigger search's
shared-prefix KV cache meets the geometry it is built for. One round: one surrogate training step, one PGD
step, one HotFlip pass over a 5-word trigger with 8 candidates per slot (40 exact candidate forwards per
sample), scoring 8 samples. Both clocks are the process's CPU time, each the minimum of several runs in the
same process on one thread, so other jobs on the machine move the ratio little. ``extra_info``: seconds per sample and the
ratio (issue 18 aims: BPH <= 15x, CRS <= 20x).
"""
import time

import pytest
import torch

from toolkit import DEFENSES
from toolkit.data import VQADataset, images_to_tensor
from toolkit.digits import load_digits_vqa
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny_llava

N = 16
GEOMETRY = {"tiny": 32, "long-prefix": 160}
ROUND = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": N, "pgd_batch_size": N, "eval_size": 8,
         "max_trigger_tokens": 5, "trigger_candidates": 8}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """CPU time is only a fair clock on one thread (several threads spin and wait on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(GEOMETRY))
def setting(request, tmp_path_factory, one_thread):
    size = GEOMETRY[request.param]
    model = load_surrogate(build_tiny_llava(tmp_path_factory.mktemp("trigger-cost") / "llava", image_size=size))
    train, _ = load_digits_vqa(image_size=size, seed=0)
    samples = list(train[:N])
    x = images_to_tensor([s.image for s in samples])

    def bare():
        with model.frozen():
            d = torch.zeros_like(x, requires_grad=True)
            start = time.process_time()
            torch.autograd.grad(model.loss(x + d, samples).sum(), d)
            return time.process_time() - start
    bare()
    return request.param, model, samples, bare


@pytest.mark.parametrize("name", ["mmguard_bph", "mmguard_crs"])
def test_trigger_round_cost(benchmark, setting, name):
    geometry, model, samples, bare = setting
    data = VQADataset(samples, name="bench")
    defense = DEFENSES.create(name, **ROUND)

    def one_round():
        start = time.process_time()
        out = defense.protect(data, [model])
        return out, time.process_time() - start

    timed = not getattr(benchmark, "disabled", False)
    if timed:
        one_round()  # warm-up (tokeniser caches, LoRA attach)
    out, first = benchmark.pedantic(one_round, rounds=1, iterations=1)
    assert len(out.dataset) == N and all(s.question != c.question for s, c in zip(out.dataset, samples))
    if timed:  # two more runs, keep the fastest; the bare step's fastest of 8 runs around them
        before = [bare() for _ in range(4)]
        cpu = [first] + [one_round()[1] for _ in range(2)]
        bare_per_sample = min(before + [bare() for _ in range(4)]) / N
        per_sample = min(cpu) / N
        ratio = per_sample / bare_per_sample
        benchmark.extra_info.update(geometry=geometry, seconds_per_sample_round=per_sample,
                                    ratio_to_bare_forward_backward=ratio)
        print(f"\n{name} [{geometry}]: {per_sample * 1e3:.1f} ms CPU per sample per round = {ratio:.1f} x bare "
              f"forward+backward ({bare_per_sample * 1e3:.2f} ms)")
