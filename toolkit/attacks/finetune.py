"""The unauthorized fine-tuning: an attacker trains a victim surrogate on a released training set.

Recipes (an attack axis in their own right): ``full`` (every weight),
``projector`` (only the vision-language projector), ``lora`` (peft adapters on
the language model's projections; the adapter stays attached for evaluation).
Evaluate the result on the CLEAN test split with
:func:`toolkit.metrics.evaluate_answers`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, List

import torch
from tqdm.auto import tqdm

from ..data import VQADataset
from ..engine import TrainState, dataset_pixels, gather, make_generator, train_step
from ..registry import Config, check_choice, check_range, make_config
from ..surrogates.base import Surrogate
from ..surrogates.hf_lvlm import LoraSettings

__all__ = ["FineTune", "FineTuneResult"]

log = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    """What a fine-tuning run did: steps, per-epoch mean loss, wall seconds."""

    steps: int
    epoch_losses: List[float] = field(default_factory=list)
    seconds: float = 0.0


class FineTune:
    """Unauthorized fine-tuning of a victim (mutates the victim: that is the attack).

    Config (keyword-only): ``mode`` full|projector|lora, ``epochs``, ``lr`` (AdamW),
    ``batch_size``, ``weight_decay``, ``lora_rank``, ``lora_alpha``,
    ``lora_dropout``, ``seed`` (batch order), ``max_grad_norm``, ``schedule``
    (constant or cosine decay of the learning rate to 0).
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

        def __post_init__(self) -> None:
            check_choice("mode", self.mode, {"full", "projector", "lora"})
            check_choice("schedule", self.schedule, {"constant", "cosine"})
            check_range("epochs", self.epochs, 1, 10_000)
            check_range("lr", self.lr, 0, 1, low_open=True)
            check_range("batch_size", self.batch_size, 1, 1 << 20)
            check_range("weight_decay", self.weight_decay, 0, 10)

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
        if countermeasure is not None and not getattr(countermeasure, "training_side", False):
            raise TypeError(f"{countermeasure!r} is a data-side countermeasure: apply it to the dataset instead")
        victim.require("trainable", who="FineTune")
        train.require_nonempty()
        if cfg.mode == "lora":
            victim.require("lora", who="FineTune(mode='lora')")
            victim.attach_lora(LoraSettings(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout))
        params = victim.trainable_parameters(cfg.mode)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        pixels = dataset_pixels(train)
        samples = list(train)
        generator = make_generator(cfg.seed)
        stream = TrainState([s.image.shape for s in samples], cfg.batch_size, generator)
        per_epoch = stream.batches_per_pass()
        scheduler = None
        if cfg.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * per_epoch)
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
