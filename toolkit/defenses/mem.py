"""MEM: multimodal unlearnable examples (Liu et al., ACM MM 2024).

Against contrastive image-text training: every pair gets an image delta and a
k-token text trigger, both error-minimising, so the model learns the
noise <-> trigger pairing instead of image <-> caption. Each round trains the
surrogate, updates the triggers by HotFlip (early rounds only; top
``trigger_candidates`` per slot, exact verification) and runs PGD on the images
while the captions are shuffled within the batch (so the image noise cannot
lean on its own caption). The trigger is prepended to the question, which for a
CLIP surrogate is the start of the caption ``"{question} {answer}"``.

Against an LVLM surrogate the loss is the answer NLL and the image step keeps
the pairs as they are (``shuffle_captions="auto"``): shuffling would ask the
noise to predict another sample's answer, which is not error-minimisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch

from ..registry import check_choice, check_range
from .base import DEFENSES
from ..surrogates.ensemble import weighted_members
from .minmin import MinMinDefense, MinMinRun
from .minmin.fluency import FluencyConfig, FluentTriggers, check_search_position

__all__ = ["MEM"]


@DEFENSES.register("mem")
class MEM(FluentTriggers, MinMinDefense):
    """Image noise + per-sample inserted trigger (see the module docstring).

    Extra config: ``max_trigger_tokens`` (k, 5), ``trigger_candidates`` (16),
    ``trigger_rounds`` (triggers are updated in the first rounds only, 5),
    ``trigger_fraction`` (share of samples searched per round, 1.0),
    ``trigger_position`` ("start"), ``shuffle_captions`` ("auto" = only for CLIP
    surrogates, "always", "never"), ``single_token_words`` (True: every trigger word stays one token of
    every surrogate in place, so k words are k tokens; False: words only, as earlier versions), and the
    fluency-aware search's options (:class:`~.minmin.fluency.FluencyConfig`: ``lambda_flu``, ``fluency_scorer``,
    ``filter_aware``, ``filter_quantile``, ``trigger_vocabulary``, ``no_repeated_words``, ``leakage_guard``,
    ``trigger_position="natural"``; off by default).
    """

    requires = ("image_grad", "trainable", "text", "token_grad")

    @dataclass(frozen=True, kw_only=True)
    class Config(FluencyConfig):
        max_trigger_tokens: int = 5
        trigger_candidates: int = 16
        trigger_rounds: int = 5
        trigger_fraction: float = 1.0
        trigger_position: Any = "start"
        shuffle_captions: str = "auto"
        single_token_words: bool = True
        pgd_steps: int = 8
        step_size: float = 1 / 255

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("max_trigger_tokens", self.max_trigger_tokens, 1, 64)
            check_range("trigger_candidates", self.trigger_candidates, 1, 1 << 16)
            check_range("trigger_rounds", self.trigger_rounds, 0, 1 << 20)
            check_range("trigger_fraction", self.trigger_fraction, 0, 1, low_open=True)
            check_search_position(self.trigger_position)
            check_choice("shuffle_captions", self.shuffle_captions, {"auto", "always", "never"})

    def setup(self, run: MinMinRun) -> None:
        """Start every sample with ``max_trigger_tokens`` random admissible words of the first surrogate (under the
        fluency options: :meth:`~.minmin.fluency.TriggerRules.start`)."""
        self.start_triggers(run)

    def _shuffles(self, surrogates) -> bool:
        mode = self.config.shuffle_captions
        if mode != "auto":
            return mode == "always"
        return all(s.contrastive for s, _ in weighted_members(surrogates))

    def step_samples(self, run: MinMinRun, samples: List) -> List:
        """Captions shuffled within the batch (contrastive surrogates, or ``shuffle_captions="always"``)."""
        if not self._shuffles(run.surrogates) or len(samples) < 2:
            return samples
        perm = torch.randperm(len(samples), generator=run.gen).tolist()
        return [samples[i].with_(question=samples[j].question, answer=samples[j].answer)
                for i, j in zip(range(len(samples)), perm)]

    def text_step(self, run: MinMinRun) -> None:
        """HotFlip pass over a random ``trigger_fraction`` of the samples in the first ``trigger_rounds``."""
        cfg = self.config
        if run.round >= cfg.trigger_rounds:
            return
        n = len(run.pert)
        idx = torch.randperm(n, generator=run.gen)[:max(1, int(round(cfg.trigger_fraction * n)))]
        self.trigger_pass(run, idx, cfg.trigger_candidates, batch_size=cfg.pgd_batch_size,
                          single_token=cfg.single_token_words)
