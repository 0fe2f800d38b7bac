"""The shared optimisation engine: PGD on image perturbations and surrogate training steps.

Every defense and the unauthorized fine-tuning use these functions, so the
mechanics (projection, sign steps, frozen parameters, batching, seeding) are
written once.

Units: pixels and perturbations are floats in [0, 1] image units; ``eps`` and
``step_size`` are in the same units (8/255 is the usual budget). Shapes are
(N, 3, H, W).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .data import VQADataset, VQASample, images_to_tensor

__all__ = ["project", "pgd", "train_step", "batch_indices", "dataset_pixels", "make_generator",
           "TrainState", "adapted"]

LossFn = Callable[[torch.Tensor, Sequence[VQASample]], torch.Tensor]


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (library code never seeds globally)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def batch_indices(n: int, batch_size: int, generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Split ``range(n)`` into batches, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def dataset_pixels(dataset: Sequence[VQASample]) -> torch.Tensor:
    """All images of a same-size dataset as one float (N, 3, H, W) tensor in [0, 1]."""
    shapes = {s.image.shape for s in dataset}
    if len(shapes) != 1:
        raise ValueError(f"images must share one size to be batched, got sizes {sorted(shapes)[:4]}...")
    return images_to_tensor([s.image for s in dataset])


def project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the L_inf ball of radius ``eps`` and keep ``x + delta`` in [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], delta: torch.Tensor, *, step_size: float,
        steps: int, project_fn: Callable[[torch.Tensor], torch.Tensor], descend: bool = True) -> torch.Tensor:
    """Projected sign-gradient steps on a perturbation variable (input gradients only).

    Args:
        objective: maps the variable to a scalar loss; the caller freezes the
            model's parameters (``Surrogate.frozen``) so no parameter gradient
            is ever formed.
        delta: the variable (per-sample (N, 3, H, W) or per-class (C, 3, H, W)).
        step_size: sign-step size in [0, 1] image units.
        project_fn: projection applied after every step (eps-ball and valid pixels).
        descend: True for error-minimising (EMN), False for error-maximising.

    Returns:
        The new variable, projected and detached.
    """
    sign = -1.0 if descend else 1.0
    delta = delta.detach()
    for _ in range(int(steps)):
        d = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(d), d)
        delta = project_fn(delta + sign * step_size * grad.sign()).detach()
    return delta


def train_step(loss_fn: LossFn, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
               samples: Sequence[VQASample], max_grad_norm: float = 1.0) -> float:
    """One optimiser step on the mean per-sample loss; returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(pixels, samples).mean()
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return float(loss.detach())


class TrainState:
    """An endless shuffled stream of batches over ``n`` items, seeded.

    ``next()`` returns the index tensor of the next batch; a new permutation is
    drawn after every pass.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n < 1:
            raise ValueError("cannot draw batches from an empty dataset")
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self._queue: List[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        """Indices of the next batch."""
        if not self._queue:
            self._queue = batch_indices(self.n, self.batch_size, self.generator)
        return self._queue.pop(0)


@contextlib.contextmanager
def adapted(surrogate, mode: str = "full", lora=None) -> Iterator[List[torch.nn.Parameter]]:
    """Temporarily make ``surrogate`` trainable and give it back unchanged afterwards.

    ``mode="lora"`` attaches a fresh adapter and removes it on exit (base weights
    never change); ``"full"`` / ``"projector"`` snapshot the trainable weights
    and restore them on exit, so a defense never mutates the surrogate it was
    given. Yields the parameters to optimise.
    """
    if mode == "lora":
        from .surrogates.hf_lvlm import LoraSettings

        surrogate.attach_lora(lora or LoraSettings())
        try:
            yield surrogate.trainable_parameters("lora")
        finally:
            surrogate.detach_lora(merge=False)
        return
    params = surrogate.trainable_parameters(mode)
    saved = [p.detach().clone() for p in params]
    try:
        yield params
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
