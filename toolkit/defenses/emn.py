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
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..data import VQASample
from ..engine import TrainState, adapted, dataset_pixels, make_generator, pgd, train_step
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
    ``init``, ``stop_accuracy``, ``stop_clean_accuracy``, ``stop_loss``, ``eval_size``.
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

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _ensemble_loss(surrogates, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Per-sample loss averaged over surrogates (uniform weights)."""
        return sum(s.loss(pixels, samples) for s in surrogates) / len(surrogates)

    def _perturbed(self, x: torch.Tensor, idx: torch.Tensor, delta: torch.Tensor,
                   classes: Optional[torch.Tensor]) -> torch.Tensor:
        d = delta[classes[idx]] if classes is not None else delta[idx]
        return (x[idx] + d).clamp(0, 1)

    # ------------------------------------------------------------------ main loop
    def _protect(self, dataset, surrogates, progress):
        cfg = self.config
        gen = make_generator(cfg.seed)
        x = dataset_pixels(dataset)
        samples = list(dataset)
        n = len(samples)
        classes = None
        if cfg.granularity == "class":
            labels = dataset.answers
            classes = torch.tensor([labels.index(s.answer) for s in samples])
            shape = (len(labels),) + tuple(x.shape[1:])
        else:
            shape = tuple(x.shape)
        delta = torch.zeros(shape)
        if cfg.init == "uniform":
            delta = (torch.rand(shape, generator=gen) * 2 - 1) * cfg.eps

        def project_fn(d: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
            d = d.clamp(-cfg.eps, cfg.eps)
            return d if idx is None else (x[idx] + d).clamp(0, 1) - x[idx]

        history: List[Dict[str, float]] = []
        lora = LoraSettings(rank=cfg.lora_rank, alpha=2 * cfg.lora_rank)
        with contextlib.ExitStack() as stack:
            param_lists = [stack.enter_context(adapted(s, cfg.train_mode, lora)) for s in surrogates]
            optimizers = [torch.optim.AdamW(p, lr=cfg.lr, weight_decay=0.0) for p in param_lists]
            stream = TrainState(n, cfg.batch_size, gen)
            eval_idx = torch.randperm(n, generator=gen)[:cfg.eval_size]
            bar = tqdm(range(cfg.rounds), desc=f"emn {cfg.granularity}", disable=not progress, leave=False)
            converged = False
            for rnd in bar:
                # (a) train the surrogate(s) on the current protected data
                for s, opt, params in zip(surrogates, optimizers, param_lists):
                    with s.training(params):
                        for _ in range(cfg.train_steps):
                            idx = stream.next()
                            train_step(s.loss, opt, self._perturbed(x, idx, delta, classes),
                                       [samples[i] for i in idx])
                # (b) PGD descent on delta against the frozen, adapted surrogate(s)
                n_pgd = max(1, int(round(cfg.pgd_fraction * n)))
                pgd_idx = torch.randperm(n, generator=gen)[:n_pgd]
                with contextlib.ExitStack() as frozen:
                    for s in surrogates:
                        frozen.enter_context(s.frozen())
                    for idx in pgd_idx.split(cfg.pgd_batch_size):
                        batch = [samples[i] for i in idx]
                        if classes is None:
                            delta[idx] = pgd(
                                lambda d: self._ensemble_loss(surrogates, x[idx] + d, batch).sum(), delta[idx],
                                step_size=cfg.step_size, steps=cfg.pgd_steps,
                                project_fn=lambda d: project_fn(d, idx))
                        else:
                            cls = classes[idx]
                            delta = pgd(
                                lambda d: self._ensemble_loss(surrogates, (x[idx] + d[cls]).clamp(0, 1), batch).sum(),
                                delta, step_size=cfg.step_size, steps=cfg.pgd_steps, project_fn=project_fn)
                    # (c) convergence check on a fixed subset, protected vs clean
                    stats = self._score(surrogates, x, delta, classes, samples, eval_idx)
                stats["round"] = rnd + 1
                history.append(stats)
                bar.set_postfix(acc=f"{stats['accuracy']:.2f}", clean=f"{stats['clean_accuracy']:.2f}",
                                loss=f"{stats['loss']:.3f}")
                log.info("emn round %d: %s", rnd + 1, stats)
                if (stats["accuracy"] >= cfg.stop_accuracy and stats["clean_accuracy"] <= cfg.stop_clean_accuracy) \
                        or stats["loss"] < cfg.stop_loss:
                    converged = True
                    break
        final = delta[classes] if classes is not None else delta
        proposals = list((x + final).clamp(0, 1))
        return proposals, {"rounds": len(history), "converged": converged, "history": history}

    @torch.no_grad()
    def _score(self, surrogates, x, delta, classes, samples, eval_idx) -> Dict[str, float]:
        accs, clean_accs, losses = [], [], []
        for idx in eval_idx.split(self.config.pgd_batch_size):
            batch = [samples[i] for i in idx]
            for s in surrogates:
                loss, correct = s.loss_and_correct(self._perturbed(x, idx, delta, classes), batch)
                _, clean_correct = s.loss_and_correct(x[idx], batch)
                losses.append(loss)
                accs.append(correct.float())
                clean_accs.append(clean_correct.float())
        return {"accuracy": float(torch.cat(accs).mean()), "clean_accuracy": float(torch.cat(clean_accs).mean()),
                "loss": float(torch.cat(losses).mean())}
