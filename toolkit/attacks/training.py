"""Training-side countermeasures: they change how the unauthorized fine-tuning sees each batch.

Pass one to :class:`~toolkit.attacks.finetune.FineTune` as ``countermeasure=``.
They are registered in ``COUNTERMEASURES`` beside the data-side transforms but
are not applied to a dataset: calling one on a dataset raises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import pgd, project
from ..registry import Config, check_range
from .base import COUNTERMEASURES, TrainingCountermeasure

__all__ = ["AdversarialTraining", "HeavyAugmentation"]


@COUNTERMEASURES.register("adversarial_training")
class AdversarialTraining(TrainingCountermeasure):
    """PGD adversarial training (Madry et al. 2018): train on x + argmax_{||d|| <= eps} loss.

    The inner maximisation uses the engine's PGD (ascent, input gradients only,
    random start in the ball). ``eps`` should be at least the protection's
    budget. ``stats`` keeps the mean loss before and after the inner step of the
    last batch, so tests and reports can check the step really maximises.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        eps: float = 8 / 255
        steps: int = 10
        step_size: float = 2 / 255
        random_start: bool = True

        def __post_init__(self) -> None:
            check_range("eps", self.eps, 0.0, 1.0, low_open=True)
            check_range("steps", self.steps, 1, 10_000)
            check_range("step_size", self.step_size, 0.0, 1.0, low_open=True)

    def batch(self, victim, pixels, samples, generator):
        cfg = self.config
        delta = torch.zeros_like(pixels)
        if cfg.random_start:
            delta = project((torch.rand(pixels.shape, generator=generator) * 2 - 1) * cfg.eps, pixels, cfg.eps)
        with victim.frozen():
            with torch.no_grad():
                before = float(victim.loss(pixels + delta, samples).mean())
            delta = pgd(lambda d: victim.loss(pixels + d, samples).sum(), delta, step_size=cfg.step_size,
                        steps=cfg.steps, project_fn=lambda d: project(d, pixels, cfg.eps), descend=False)
            with torch.no_grad():
                after = float(victim.loss(pixels + delta, samples).mean())
        self.stats = {"loss_before": before, "loss_after": after}
        return (pixels + delta).detach()


@COUNTERMEASURES.register("heavy_augmentation")
class HeavyAugmentation(TrainingCountermeasure):
    """UEraser-style heavy random augmentation of every training batch.

    Per sample: random resized crop (scale ``crop_scale``..1), horizontal flip
    (``flip`` probability), brightness/contrast jitter (``jitter``), additive
    uniform noise (``noise``), channel shuffle (``channel_shuffle`` probability).
    With ``worst_of`` = K > 1 the K augmentations are drawn and the one with the
    highest loss is kept (the adversarial variant).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        crop_scale: float = 0.6
        flip: float = 0.5
        jitter: float = 0.4
        noise: float = 16 / 255
        channel_shuffle: float = 0.3
        worst_of: int = 1

        def __post_init__(self) -> None:
            check_range("crop_scale", self.crop_scale, 0.05, 1.0)
            check_range("flip", self.flip, 0.0, 1.0)
            check_range("jitter", self.jitter, 0.0, 1.0)
            check_range("noise", self.noise, 0.0, 1.0)
            check_range("channel_shuffle", self.channel_shuffle, 0.0, 1.0)
            check_range("worst_of", self.worst_of, 1, 64)

    def _draw(self, pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        n, _, h, w = pixels.shape
        out = []
        for i in range(n):
            x = pixels[i]
            scale = cfg.crop_scale + (1 - cfg.crop_scale) * float(torch.rand((), generator=g))
            ch, cw = max(1, int(round(h * scale ** 0.5))), max(1, int(round(w * scale ** 0.5)))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            x = torch.nn.functional.interpolate(x[None, :, top:top + ch, left:left + cw], size=(h, w),
                                                mode="bilinear", align_corners=False)[0]
            if float(torch.rand((), generator=g)) < cfg.flip:
                x = x.flip(-1)
            if cfg.jitter:
                b = 1 + cfg.jitter * (2 * float(torch.rand((), generator=g)) - 1)
                c = 1 + cfg.jitter * (2 * float(torch.rand((), generator=g)) - 1)
                x = ((x * b - x.mean()) * c + x.mean())
            if cfg.noise:
                x = x + (torch.rand(x.shape, generator=g) * 2 - 1) * cfg.noise
            if float(torch.rand((), generator=g)) < cfg.channel_shuffle:
                x = x[torch.randperm(3, generator=g)]
            out.append(x.clamp(0, 1))
        return torch.stack(out)

    def batch(self, victim, pixels, samples, generator):
        if self.config.worst_of == 1:
            return self._draw(pixels, generator)
        candidates = [self._draw(pixels, generator) for _ in range(self.config.worst_of)]
        with victim.frozen(), torch.no_grad():
            losses = torch.stack([victim.loss(c, samples) for c in candidates])  # (K, B)
        pick = losses.argmax(dim=0)
        return torch.stack([candidates[int(k)][i] for i, k in enumerate(pick)])
