"""EMN: error-minimising noise (Huang et al., ICLR 2021, "Unlearnable Examples").

min_theta E min_{||delta||_inf <= eps} L(f_theta(x + delta), y): alternate a few
training steps of the surrogate on the current protected data with PGD
*descent* on delta, so delta becomes a shortcut that makes the loss small
without the model learning the content. For an LVLM, L is the answer-token NLL.

Granularity: ``sample`` (one delta per sample) or ``class`` (one delta per
distinct answer, the classic class-wise variant).

Threat model: white-box on the surrogate(s); the victim may differ. The
surrogate is trained from its given weights (``train_mode="full"`` for a small
from-scratch model, ``"lora"`` for a pretrained LVLM) and restored afterwards.

Restarts (``restart_every``, ours): every k rounds the surrogate goes back to
its starting weights (a fresh adapter for LoRA) and a fresh optimiser, or, with
``restart_init="random"`` (from-scratch surrogates), to a new random
initialisation, so the noise cannot lean on one initialisation's features. The
noise is then optimised to be what a model picks up *first* rather than a
complement to features a long-trained surrogate already knows. On the digits
task sample-wise EMN only becomes a shortcut this way (see the README's
table); the classic recipe is ``restart_every=0``.

Stopping: after each round the surrogate is scored on ``eval_size`` training
samples, with and without the noise (teacher-forced exact match). Stop when the
accuracy on protected data reaches ``stop_accuracy`` *and* the accuracy on the
same clean images is at most ``stop_clean_accuracy`` (on easy data a clean model
also fits the training set, so the first rule alone is fooled), or when the
mean protected loss drops below ``stop_loss``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..data import VQASample
from ..engine import (TrainState, adapted, dataset_pixels, gather, make_generator, pgd, project, shape_batches,
                      train_step)
from ..registry import check_choice, check_range
from ..surrogates.hf_lvlm import LoraSettings
from .base import DEFENSES, Defense, DefenseConfig

__all__ = ["EMN"]

log = logging.getLogger(__name__)


@DEFENSES.register("emn")
class EMN(Defense):
    """Error-minimising noise, sample-wise or class-wise, on the shared min-min engine.

    Config (keyword-only, see :class:`EMN.Config`): ``eps``, ``seed``,
    ``granularity``, ``rounds`` (maximum), ``train_steps`` and ``pgd_steps`` per
    round, ``step_size``, ``pgd_fraction`` (share of samples updated per round),
    ``batch_size``, ``pgd_batch_size``, ``lr``, ``train_mode``, ``lora_rank``,
    ``init``, ``stop_accuracy``, ``stop_clean_accuracy``, ``stop_loss``, ``eval_size``,
    ``restart_every``.
    """

    requires = ("image_grad", "trainable")
    needs_surrogate = True

    @dataclass(frozen=True, kw_only=True)
    class Config(DefenseConfig):
        granularity: str = "sample"
        rounds: int = 30
        train_steps: int = 10
        pgd_steps: int = 5
        step_size: float = 2 / 255
        pgd_fraction: float = 1.0
        batch_size: int = 64
        pgd_batch_size: int = 128
        lr: float = 2e-3
        train_mode: str = "full"
        lora_rank: int = 8
        init: str = "zeros"
        stop_accuracy: float = 0.99
        stop_clean_accuracy: float = 0.5
        stop_loss: float = 0.0
        eval_size: int = 256
        restart_every: int = 0
        restart_init: str = "same"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("granularity", self.granularity, {"sample", "class"})
            check_choice("train_mode", self.train_mode, {"full", "projector", "lora"})
            check_choice("init", self.init, {"zeros", "uniform"})
            check_range("rounds", self.rounds, 1, 100_000)
            check_range("train_steps", self.train_steps, 0, 100_000)
            check_range("pgd_steps", self.pgd_steps, 1, 100_000)
            check_range("step_size", self.step_size, 0, 1, low_open=True)
            check_range("pgd_fraction", self.pgd_fraction, 0, 1, low_open=True)
            check_range("batch_size", self.batch_size, 1, 1 << 20)
            check_range("pgd_batch_size", self.pgd_batch_size, 1, 1 << 20)
            check_range("lr", self.lr, 0, 1, low_open=True)
            check_range("stop_accuracy", self.stop_accuracy, 0, 1)
            check_range("stop_clean_accuracy", self.stop_clean_accuracy, 0, 1)
            check_range("stop_loss", self.stop_loss, 0, 1e9)
            check_range("eval_size", self.eval_size, 1, 1 << 30)
            check_range("restart_every", self.restart_every, 0, 1 << 30)
            check_choice("restart_init", self.restart_init, {"same", "random"})
            if self.restart_init == "random" and self.train_mode != "full":
                raise ValueError("restart_init='random' needs train_mode='full' (a from-scratch surrogate)")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _ensemble_loss(surrogates, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Per-sample loss averaged over surrogates (uniform weights)."""
        return sum(s.loss(pixels, samples) for s in surrogates) / len(surrogates)

    def _batch(self, x: List[torch.Tensor], delta, idx: torch.Tensor,
               classes: Optional[torch.Tensor]) -> torch.Tensor:
        """Protected pixels (B, 3, H, W) of the items ``idx`` under the current noise."""
        d = delta[classes[idx]] if classes is not None else gather(delta, idx)
        return (gather(x, idx) + d).clamp(0, 1)

    # ------------------------------------------------------------------ main loop
    def _protect(self, dataset, surrogates, progress):
        cfg = self.config
        gen = make_generator(cfg.seed)
        x = dataset_pixels(dataset)
        samples = list(dataset)
        shapes = [s.image.shape for s in samples]
        n = len(samples)
        classes = None
        if cfg.granularity == "class":
            if len(set(shapes)) > 1:
                raise ValueError(f"class-wise EMN needs all images the same size; {dataset.name} has "
                                 f"{len(set(shapes))} sizes (resize first or use granularity='sample')")
            labels = dataset.answers
            classes = torch.tensor([labels.index(s.answer) for s in samples])
            delta = torch.zeros((len(labels),) + tuple(x[0].shape))
            if cfg.init == "uniform":
                delta = (torch.rand(delta.shape, generator=gen) * 2 - 1) * cfg.eps
        else:
            delta = [torch.zeros_like(t) for t in x]
            if cfg.init == "uniform":
                delta = [(torch.rand(t.shape, generator=gen) * 2 - 1) * cfg.eps for t in x]

        history: List[Dict[str, float]] = []
        lora = LoraSettings(rank=cfg.lora_rank, alpha=2 * cfg.lora_rank)
        with contextlib.ExitStack() as stack:
            states = [stack.enter_context(adapted(s, cfg.train_mode, lora)) for s in surrogates]
            optimizers = [torch.optim.AdamW(st.params, lr=cfg.lr, weight_decay=0.0) for st in states]
            stream = TrainState(shapes, cfg.batch_size, gen)
            eval_idx = torch.randperm(n, generator=gen)[:cfg.eval_size]
            bar = tqdm(range(cfg.rounds), desc=f"emn {cfg.granularity}", disable=not progress, leave=False)
            converged = False
            for rnd in bar:
                if cfg.restart_every and rnd and rnd % cfg.restart_every == 0:
                    seeds = [int(torch.randint(0, 2 ** 31 - 1, (), generator=gen)) if cfg.restart_init == "random"
                             else None for _ in states]
                    optimizers = [torch.optim.AdamW(st.reset(seed), lr=cfg.lr, weight_decay=0.0)
                                  for st, seed in zip(states, seeds)]
                # (a) train the surrogate(s) on the current protected data
                for s, opt, st in zip(surrogates, optimizers, states):
                    with s.training(st.params):
                        for _ in range(cfg.train_steps):
                            idx = stream.next()
                            train_step(s.loss, opt, self._batch(x, delta, idx, classes), [samples[i] for i in idx])
                # (b) PGD descent on delta against the frozen, adapted surrogate(s)
                n_pgd = max(1, int(round(cfg.pgd_fraction * n)))
                pgd_idx = torch.randperm(n, generator=gen)[:n_pgd]
                with contextlib.ExitStack() as frozen:
                    for s in surrogates:
                        frozen.enter_context(s.frozen())
                    for idx in shape_batches(shapes, cfg.pgd_batch_size, indices=pgd_idx):
                        batch = [samples[i] for i in idx]
                        xb = gather(x, idx)
                        if classes is None:
                            new = pgd(lambda d: self._ensemble_loss(surrogates, xb + d, batch).sum(),
                                      gather(delta, idx), step_size=cfg.step_size, steps=cfg.pgd_steps,
                                      project_fn=lambda d: project(d, xb, cfg.eps))
                            for j, i in enumerate(idx.tolist()):
                                delta[i] = new[j]
                        else:
                            cls = classes[idx]
                            delta = pgd(
                                lambda d: self._ensemble_loss(surrogates, (xb + d[cls]).clamp(0, 1), batch).sum(),
                                delta, step_size=cfg.step_size, steps=cfg.pgd_steps,
                                project_fn=lambda d: d.clamp(-cfg.eps, cfg.eps))
                    # (c) convergence check on a fixed subset, protected vs clean
                    stats = self._score(surrogates, x, delta, classes, samples, shapes, eval_idx)
                stats["round"] = rnd + 1
                history.append(stats)
                bar.set_postfix(acc=f"{stats['accuracy']:.2f}", clean=f"{stats['clean_accuracy']:.2f}",
                                loss=f"{stats['loss']:.3f}")
                log.info("emn round %d: %s", rnd + 1, stats)
                if (stats["accuracy"] >= cfg.stop_accuracy and stats["clean_accuracy"] <= cfg.stop_clean_accuracy) \
                        or stats["loss"] < cfg.stop_loss:
                    converged = True
                    break
        if classes is not None:
            proposals = [(xi + delta[c]).clamp(0, 1) for xi, c in zip(x, classes.tolist())]
        else:
            proposals = [(xi + di).clamp(0, 1) for xi, di in zip(x, delta)]
        return proposals, {"rounds": len(history), "converged": converged, "history": history}

    @torch.no_grad()
    def _score(self, surrogates, x, delta, classes, samples, shapes, eval_idx) -> Dict[str, float]:
        accs, clean_accs, losses = [], [], []
        for idx in shape_batches(shapes, self.config.pgd_batch_size, indices=eval_idx):
            batch = [samples[i] for i in idx]
            for s in surrogates:
                loss, correct = s.loss_and_correct(self._batch(x, delta, idx, classes), batch)
                _, clean_correct = s.loss_and_correct(gather(x, idx), batch)
                losses.append(loss)
                accs.append(correct.float())
                clean_accs.append(clean_correct.float())
        return {"accuracy": float(torch.cat(accs).mean()), "clean_accuracy": float(torch.cat(clean_accs).mean()),
                "loss": float(torch.cat(losses).mean())}
