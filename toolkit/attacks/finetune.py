"""The unauthorized fine-tuning: an attacker trains a victim surrogate on a released training set.

Recipes (an attack axis in their own right): ``full`` (every weight),
``projector`` (only the vision-language projector), ``lora`` (peft adapters on
the language model's projections; the adapter stays attached for evaluation).
Evaluate the result on the CLEAN test split with
:func:`toolkit.metrics.evaluate_answers`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from tqdm.auto import tqdm

from ..data import VQADataset
from ..engine import TrainState, dataset_pixels, gather, make_generator, train_step
from ..registry import Config, check_choice, check_range, make_config
from ..surrogates.base import Surrogate
from ..surrogates.base import LoraSettings
from .base import TrainingCountermeasure

__all__ = ["FineTune", "FineTuneResult", "learning_rate_schedule"]

log = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    """What a fine-tuning run did: steps, per-epoch mean loss, wall seconds."""

    steps: int
    epoch_losses: List[float] = field(default_factory=list)
    seconds: float = 0.0


def learning_rate_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                           warmup: float = 0.0) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The per-step learning-rate scheduler of a recipe (None for a constant rate without warm-up).

    ``warmup`` is the share of ``total_steps`` over which the rate rises linearly
    from ~0 to its peak; ``schedule`` "cosine" then decays it to 0 at the last
    step. Without warm-up the cosine schedule is torch's ``CosineAnnealingLR``.
    """
    warm = int(round(warmup * total_steps))
    if not warm:
        if schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return None

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class FineTune:
    """Unauthorized fine-tuning of a victim (mutates the victim: that is the attack).

    Config (keyword-only): ``mode`` full|projector|lora, ``epochs``, ``lr`` (AdamW),
    ``batch_size``, ``weight_decay``, ``lora_rank``, ``lora_alpha``,
    ``lora_dropout``, ``seed`` (batch order, LoRA initialisation and dropout: a run is reproducible), ``max_grad_norm``, ``schedule``
    (constant or cosine decay of the learning rate to 0), ``warmup`` (share of all
    steps with a linear learning-rate warm-up from 0; 0 = none), ``lora_projector``
    (mode lora only: also train the vision-language projector in full, as
    LLaVA-1.5's LoRA recipe does), ``lora_target`` (regex over module names for the
    adapters; None = the family's attention+MLP projections of the language model).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        mode: str = "full"
        epochs: int = 15
        lr: float = 2e-3
        batch_size: int = 64
        weight_decay: float = 0.0
        lora_rank: int = 8
        lora_alpha: int = 16
        lora_dropout: float = 0.0
        seed: int = 0
        max_grad_norm: float = 1.0
        schedule: str = "cosine"
        warmup: float = 0.0
        lora_projector: bool = False
        lora_target: Optional[str] = None

        def __post_init__(self) -> None:
            check_choice("mode", self.mode, {"full", "projector", "lora"})
            check_choice("schedule", self.schedule, {"constant", "cosine"})
            check_range("epochs", self.epochs, 1, 10_000)
            check_range("lr", self.lr, 0, 1, low_open=True)
            check_range("batch_size", self.batch_size, 1, 1 << 20)
            check_range("weight_decay", self.weight_decay, 0, 10)
            check_range("warmup", self.warmup, 0, 1, high_open=True)
            if not isinstance(self.lora_projector, bool):
                raise ValueError(f"lora_projector must be a bool, got {self.lora_projector!r}")
            if self.mode != "lora" and (self.lora_projector or self.lora_target is not None):
                raise ValueError(f"lora_projector / lora_target need mode='lora', got mode={self.mode!r}")

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, "FineTune", config)

    def __call__(self, victim: Surrogate, train: VQADataset, progress: bool = False,
                 countermeasure=None) -> FineTuneResult:
        """Train ``victim`` on ``train`` (a protected and possibly countermeasured training split).

        ``countermeasure``: an optional training-side countermeasure
        (:class:`~toolkit.attacks.training.TrainingCountermeasure`) that rewrites
        every batch (adversarial training, heavy augmentation).
        """
        cfg = self.config
        if countermeasure is not None and not isinstance(countermeasure, TrainingCountermeasure):
            raise TypeError(f"{countermeasure!r} is a data-side countermeasure: apply it to the dataset instead")
        victim.require("trainable", who="FineTune")
        train.require_nonempty()
        devices = sorted({victim.device.index or 0} if victim.device.type == "cuda" else set())
        with torch.random.fork_rng(devices=devices):  # LoRA init and dropout from the seed, not the global RNG
            torch.manual_seed(int(cfg.seed))
            return self._train(victim, train, progress, countermeasure)

    def _train(self, victim: Surrogate, train: VQADataset, progress: bool, countermeasure) -> FineTuneResult:
        cfg = self.config
        if cfg.mode == "lora":
            victim.require("lora", who="FineTune(mode='lora')")
            victim.attach_lora(LoraSettings(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                            target=cfg.lora_target))
        params = victim.trainable_parameters(cfg.mode)
        if cfg.lora_projector:
            params = params + victim.trainable_parameters("projector")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        pixels = dataset_pixels(train)
        samples = list(train)
        generator = make_generator(cfg.seed)
        stream = TrainState([s.image.shape for s in samples], cfg.batch_size, generator)
        per_epoch = stream.batches_per_pass()
        scheduler = learning_rate_schedule(optimizer, cfg.schedule, cfg.epochs * per_epoch, cfg.warmup)
        result = FineTuneResult(steps=0)
        start = time.perf_counter()
        with victim.training(params):
            bar = tqdm(range(cfg.epochs), desc=f"fine-tune {cfg.mode}", disable=not progress, leave=False)
            for _ in bar:
                losses = []
                for _ in range(per_epoch):
                    idx = stream.next()
                    batch, chosen = gather(pixels, idx), [samples[i] for i in idx]
                    if countermeasure is not None:
                        batch = countermeasure.batch(victim, batch, chosen, generator)
                    losses.append(train_step(victim.loss, optimizer, batch, chosen, cfg.max_grad_norm))
                    if scheduler is not None:
                        scheduler.step()
                    result.steps += 1
                result.epoch_losses.append(sum(losses) / len(losses))
                bar.set_postfix(loss=f"{result.epoch_losses[-1]:.3f}")
        result.seconds = time.perf_counter() - start
        log.info("fine-tuned %s for %d steps in %.1fs", victim.family, result.steps, result.seconds)
        return result
