"""The shared optimisation engine: PGD on image perturbations and surrogate training steps.

Every defense and the unauthorized fine-tuning use these functions, so the
mechanics (projection, sign steps, frozen parameters, batching, seeding) are
written once.

Units: pixels and perturbations are floats in [0, 1] image units; ``eps`` and
``step_size`` are in the same units (8/255 is the usual budget). Batches are
(N, 3, H, W); a dataset may mix resolutions, so per-sample tensors are kept in
lists and batches are drawn within one resolution (:func:`shape_batches`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import torch

from .data import VQASample

__all__ = ["project", "clamp_pixels", "pgd", "train_step", "shape_batches", "dataset_pixels", "gather",
           "make_generator", "TrainState", "adapted", "Adaptation"]

LossFn = Callable[[torch.Tensor, Sequence[VQASample]], torch.Tensor]


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (library code never seeds globally)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def shape_batches(shapes: Sequence[tuple], batch_size: int, generator: Optional[torch.Generator] = None,
                  indices: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Split indices into batches whose images all share one shape.

    Args:
        shapes: image shape of every item (mixed resolutions are allowed).
        batch_size: largest batch.
        generator: if given, items are shuffled and the batch order too.
        indices: restrict to these items (default: all).

    Returns:
        A list of 1-D index tensors.
    """
    if indices is None:
        indices = torch.arange(len(shapes))
    if generator is not None:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    groups: dict = {}
    for i in indices.tolist():
        groups.setdefault(tuple(shapes[i]), []).append(i)
    batches = [torch.tensor(g[k:k + batch_size]) for g in groups.values() for k in range(0, len(g), batch_size)]
    if generator is not None and len(batches) > 1:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def dataset_pixels(dataset: Sequence[VQASample]) -> List[torch.Tensor]:
    """Every image as a float (3, H, W) tensor in [0, 1] (sizes may differ)."""
    return [torch.tensor(s.image).permute(2, 0, 1).float().div_(255.0) for s in dataset]


def gather(tensors: Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Stack ``tensors[i]`` for ``i`` in ``idx`` into (B, ...) (all the same shape)."""
    return torch.stack([tensors[i] for i in idx.tolist()])


def clamp_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels.clamp(0, 1)`` with a straight-through gradient (the value is clamped, the gradient passes).

    torch gives ``clamp`` a zero gradient at a value lying exactly on a bound, so under a sign step a
    pixel that sits on 0 or 1 (a black or white clean pixel with a zero start, or one the projection put
    there) would never move again, even when the loss wants it back inside; objectives of perturbations
    build their images with this instead.
    """
    return pixels + (pixels.clamp(0, 1) - pixels).detach()


def project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the L_inf ball of radius ``eps`` and keep ``x + delta`` in [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], delta: torch.Tensor, *, step_size: float,
        steps: int, project_fn: Callable[[torch.Tensor], torch.Tensor], descend: bool = True,
        samples: int = 1) -> torch.Tensor:
    """Projected sign-gradient steps on a perturbation variable (input gradients only).

    Args:
        objective: maps the variable to a scalar loss; the caller freezes the
            model's parameters (``Surrogate.frozen``) so no parameter gradient
            is ever formed. It may be random (expectation over transformations).
        delta: the variable (per-sample (N, 3, H, W) or per-class (C, 3, H, W)).
        step_size: sign-step size in [0, 1] image units.
        project_fn: projection applied after every step (eps-ball and valid pixels).
        descend: True for error-minimising (EMN), False for error-maximising.
        samples: calls of ``objective`` per step; the step follows the sign of their mean gradient
            (each call is differentiated on its own, so memory stays that of one call).

    Returns:
        The new variable, projected and detached.
    """
    sign = -1.0 if descend else 1.0
    delta = delta.detach()
    for _ in range(int(steps)):
        d = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(d), d)
        for _ in range(int(samples) - 1):
            grad = grad + torch.autograd.grad(objective(d), d)[0]
        if samples > 1:
            grad = grad / samples
        delta = project_fn(delta + sign * step_size * grad.sign()).detach()
    return delta


def train_step(loss_fn: LossFn, optimizer: torch.optim.Optimizer, pixels: Optional[torch.Tensor],
               samples: Sequence[VQASample], max_grad_norm: float = 1.0,
               reduce_grads: Optional[Callable[[List[torch.nn.Parameter]], None]] = None) -> float:
    """One optimiser step on the mean per-sample loss; returns the loss value.

    ``reduce_grads`` (data-parallel training, see :meth:`toolkit.distributed.World.average_gradients`)
    receives the optimiser's parameters after the backward pass and before clipping, to combine the
    gradients of every process's part of the batch; with it, an empty part (no samples, ``pixels`` None)
    runs no forward pass and contributes no gradient.
    """
    optimizer.zero_grad(set_to_none=True)
    if len(samples) or reduce_grads is None:
        loss = loss_fn(pixels, samples).mean()
        loss.backward()
    else:
        loss = torch.zeros(())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if reduce_grads is not None:
        reduce_grads(params)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return float(loss.detach())


class TrainState:
    """An endless seeded stream of same-shape batches over a dataset's items.

    ``next()`` returns the index tensor of the next batch; a new shuffled pass
    starts when one is used up.
    """

    def __init__(self, shapes: Sequence[tuple], batch_size: int, generator: torch.Generator) -> None:
        if len(shapes) < 1:
            raise ValueError("cannot draw batches from an empty dataset")
        self.shapes, self.batch_size, self.generator = list(shapes), min(batch_size, len(shapes)), generator
        self._queue: List[torch.Tensor] = []

    def batches_per_pass(self) -> int:
        """How many batches one pass over the data has."""
        return len(shape_batches(self.shapes, self.batch_size))

    def next(self) -> torch.Tensor:
        """Indices of the next batch."""
        if not self._queue:
            self._queue = shape_batches(self.shapes, self.batch_size, self.generator)
        return self._queue.pop(0)

    def pending(self) -> List[torch.Tensor]:
        """The batches left in the current pass (for a checkpoint)."""
        return list(self._queue)

    def restore(self, pending: Sequence[torch.Tensor]) -> None:
        """Continue from :meth:`pending` output (the generator's state is restored separately)."""
        self._queue = list(pending)


class Adaptation:
    """Trainable state of a surrogate inside :func:`adapted`: ``params`` and ``reset()``."""

    def __init__(self, surrogate, mode: str, lora) -> None:
        self.surrogate, self.mode, self.lora = surrogate, mode, lora
        self.params: List[torch.nn.Parameter] = []
        self._saved: List[torch.Tensor] = []

    def start(self) -> None:
        if self.mode == "lora":
            from .surrogates.base import LoraSettings

            self.surrogate.attach_lora(self.lora or LoraSettings())
            self.params = self.surrogate.trainable_parameters("lora")
        else:
            self.params = self.surrogate.trainable_parameters(self.mode)
            self._saved = [p.detach().clone() for p in self.params]

    def stop(self) -> None:
        if self.mode == "lora":
            self.surrogate.detach_lora(merge=False)
        else:
            with torch.no_grad():
                for p, s in zip(self.params, self._saved):
                    p.copy_(s)

    def reset(self, reinit_seed: Optional[int] = None) -> List[torch.nn.Parameter]:
        """Back to the starting weights (a fresh adapter for LoRA); returns the new parameter list.

        With ``reinit_seed`` (full mode only) the surrogate instead gets a new random
        initialisation drawn with that seed; the original weights still come back on exit.
        """
        if reinit_seed is not None:
            if self.mode != "full":
                raise ValueError("random re-initialisation needs train_mode='full'")
            self.surrogate.reinitialize(reinit_seed)
            self.params = self.surrogate.trainable_parameters("full")
            return self.params
        self.stop()
        self.start()
        return self.params


@contextlib.contextmanager
def adapted(surrogate, mode: str = "full", lora=None) -> Iterator[Adaptation]:
    """Temporarily make ``surrogate`` trainable and give it back unchanged afterwards.

    ``mode="lora"`` attaches a fresh adapter and removes it on exit (base weights
    never change); ``"full"`` / ``"projector"`` snapshot the trainable weights
    and restore them on exit, so a defense never mutates the surrogate it was
    given. Yields an :class:`Adaptation` (``.params`` to optimise, ``.reset()``).
    """
    models = [m.model for m in getattr(surrogate, "members", [surrogate])]
    flags = [[p.requires_grad for p in m.parameters()] for m in models]  # peft changes them
    state = Adaptation(surrogate, mode, lora)
    state.start()
    try:
        yield state
    finally:
        state.stop()
        for m, fl in zip([m.model for m in getattr(surrogate, "members", [surrogate])], flags):
            for p, f in zip(m.parameters(), fl):
                p.requires_grad_(f)
