"""Cost of one protect (PGD) step vs the bare input-gradient forward+backward, same batch of 64.

Run: ``python -m pytest benchmarks`` (add ``--benchmark-json out.json`` to keep
numbers). The ratio (protect step / bare step) is stored in the protect
benchmark's ``extra_info`` and printed; ~1.0 means the engine adds nothing.
"""
import torch

from toolkit.engine import pgd, project

from _timing import median_seconds

_MEDIANS = {}


def _bare_step(llava, x, samples):
    d = torch.zeros_like(x, requires_grad=True)
    (g,) = torch.autograd.grad(llava.loss(x + d, samples).sum(), d)
    return g


def test_bare_input_gradient_step(benchmark, llava, batch):
    x, samples = batch
    with llava.frozen():
        grad = benchmark(_bare_step, llava, x, samples)
    assert grad.shape == x.shape and grad.abs().sum() > 0  # a real input gradient was formed
    _MEDIANS["bare"] = median_seconds(benchmark)


def test_emn_protect_step(benchmark, llava, batch):
    x, samples = batch
    eps = 8 / 255
    delta = torch.zeros_like(x)

    def step():
        return pgd(lambda d: llava.loss(x + d, samples).sum(), delta, step_size=2 / 255, steps=1,
                   project_fn=lambda d: project(d, x, eps))

    with llava.frozen():
        new = benchmark(step)
    assert new.shape == x.shape and 0 < new.abs().max() <= eps + 1e-6  # one signed step, projected
    median = median_seconds(benchmark)
    if median is not None and _MEDIANS.get("bare"):
        ratio = median / _MEDIANS["bare"]
        benchmark.extra_info["ratio_to_bare_forward_backward"] = ratio
        print(f"\nprotect step / bare forward+backward = {ratio:.3f} "
              f"({median * 1e3:.1f} ms vs {_MEDIANS['bare'] * 1e3:.1f} ms, batch 64)")


def test_training_step_reference(benchmark, llava, batch):
    """A parameter-gradient training step on the same batch, for scale."""
    x, samples = batch
    params = llava.trainable_parameters("full")
    opt = torch.optim.SGD(params, lr=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        llava.loss(x, samples).mean().backward()

    with llava.training(params):
        benchmark(step)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)  # parameter gradients formed
