"""Per family: one protect (PGD) step vs the bare input-gradient forward+backward, batch of 16 digits.

Each family's tiny random-init model (the same transformers classes as real
checkpoints). The bare step is timed in the test (median of 5 runs) and the
ratio protect / bare is stored in the benchmark's ``extra_info``; ~1.0 means
the engine adds nothing on top of the model's own forward+backward.
"""
import statistics
import time

import pytest
import torch

from toolkit.engine import pgd, project
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny, tiny_families

from _timing import median_seconds


@pytest.fixture(scope="module")
def small_batch(batch):
    x, samples = batch
    return x[:16], samples[:16]


@pytest.mark.parametrize("family", tiny_families())
def test_family_protect_step(benchmark, family, small_batch, tmp_path):
    surrogate = load_surrogate(build_tiny(family, tmp_path / family, seed=0))
    x, samples = small_batch
    eps = 8 / 255

    def bare():
        d = torch.zeros_like(x, requires_grad=True)
        return torch.autograd.grad(surrogate.loss(x + d, samples).sum(), d)

    def step():
        return pgd(lambda d: surrogate.loss(x + d, samples).sum(), torch.zeros_like(x), step_size=2 / 255,
                   steps=1, project_fn=lambda d: project(d, x, eps))

    with surrogate.frozen():
        bare()  # warm-up (tokeniser cache, kernels)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            bare()
            times.append(time.perf_counter() - t0)
        new = benchmark(step)
    assert new.shape == x.shape and 0 < new.abs().max() <= eps + 1e-6  # one signed step, projected
    median = median_seconds(benchmark)
    bare_median = statistics.median(times)
    benchmark.extra_info["bare_forward_backward_s"] = bare_median
    if median is not None:
        benchmark.extra_info["ratio_to_bare_forward_backward"] = median / bare_median
        print(f"\n{family}: protect step {median * 1e3:.1f} ms, bare {bare_median * 1e3:.1f} ms, "
              f"ratio {median / bare_median:.2f}")
