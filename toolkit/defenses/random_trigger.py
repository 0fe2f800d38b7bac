"""Random trigger: the unoptimised control of every trigger defense (MEM, MMGuard).

It inserts ``max_trigger_tokens`` words drawn uniformly from the surrogate's admissible trigger vocabulary
(answer words excluded, as the trigger defenses exclude them) into each question, and optionally adds the
uniform image noise of :class:`~toolkit.defenses.RandomNoise`. Nothing is optimised: a victim that loses
accuracy on this release loses it to inserted words as such (a shift between the training and the test
questions), not to what a trigger search found. A trigger defense's drop is evidence of its optimisation
only beyond this control's drop on the same victim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch

from ..engine import make_generator
from ..registry import check_range
from ..triggers import answer_words, check_trigger_position, insert_trigger
from .base import DEFENSES, Proposal
from .random_noise import RandomNoise

__all__ = ["RandomTrigger"]


@DEFENSES.register("random_trigger")
class RandomTrigger(RandomNoise):
    """k random vocabulary words inserted per question (+ optional U(-eps, eps) image noise), unoptimised.

    Threat model: a data owner who inserts words with no search. The surrogate only supplies the vocabulary
    (:meth:`trigger_vocabulary`, the words MMGuard's search draws from), so any model of the family serves.
    Same seed -> same words and noise.
    """

    requires = ("token_grad",)
    needs_surrogate = True

    @dataclass(frozen=True, kw_only=True)
    class Config(RandomNoise.Config):
        """Attributes:
            max_trigger_tokens: words inserted per question (5, MMGuard's eps_t), >= 1.
            trigger_position: "start", "end" or a word index.
            noise: also add RandomNoise's image noise (True); False changes no pixel (the text-only control).
        """

        max_trigger_tokens: int = 5
        trigger_position: Union[str, int] = "start"
        noise: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("max_trigger_tokens", self.max_trigger_tokens, 1, 64)
            check_trigger_position(self.trigger_position)
            if not isinstance(self.noise, bool):
                raise ValueError(f"noise must be true or false, got {self.noise!r}")

    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        cfg = self.config
        if cfg.noise:
            images = super()._protect(dataset, surrogates, progress, checkpoint).images
        else:
            images = [s.image for s in dataset]
        banned = answer_words(dataset)
        vocab = surrogates[0].trigger_vocabulary().without(banned)
        if len(vocab) == 0:
            raise ValueError(f"{self.name}: the surrogate's trigger vocabulary has no word left after removing "
                             "the answers' words")
        g = make_generator(cfg.seed + 1)  # a stream apart from the image noise's
        picks = torch.randint(0, len(vocab), (len(dataset), cfg.max_trigger_tokens), generator=g).tolist()
        questions, triggers = [], []
        for s, row in zip(dataset, picks):
            words = [vocab.words[j] for j in row]
            questions.append(insert_trigger(s.question, words, cfg.trigger_position)[0])
            triggers.append({"words": words, "position": cfg.trigger_position})
        info: dict[str, Any] = {"vocabulary_size": len(vocab)}
        return Proposal(images, questions=questions, triggers=triggers, info=info)
