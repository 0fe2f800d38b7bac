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

from .base import DEFENSES
from .minmin import MinMinConfig, MinMinDefense

__all__ = ["EMN"]


@DEFENSES.register("emn")
class EMN(MinMinDefense):
    """Error-minimising noise, sample-wise or class-wise, on the shared min-min engine.

    Config (keyword-only, see :class:`~toolkit.defenses.minmin.MinMinConfig`): ``eps``, ``seed``,
    ``granularity``, ``answer_clusters``, ``rounds`` (maximum), ``train_steps`` and ``pgd_steps``
    per round, ``step_size``, ``pgd_fraction`` (share of samples updated per round),
    ``batch_size``, ``pgd_batch_size``, ``lr``, ``train_mode``, ``lora_rank``, ``init``,
    ``stop_accuracy``, ``stop_clean_accuracy``, ``stop_loss``, ``eval_size``,
    ``restart_every``, ``restart_init``; against purification ``eot``, ``eot_samples`` and ``low_frequency``
    (see :mod:`toolkit.pixel_transforms` and docs/COMPONENTS.md).
    """

    Config = MinMinConfig
