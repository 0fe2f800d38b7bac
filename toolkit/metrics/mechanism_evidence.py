"""Mechanism evidence that can fail: MMGuard's attention routing against a random control.

:func:`mechanism_metrics` on a protected release is not evidence by itself: with
near-uniform attention a 5-word trigger takes about 5/L of the answer's attention
whatever its words, and Theorem 5.1's bound holds by Pinsker's inequality. The
comparison that can fail is against a **random control**: the same samples with
random admissible trigger words of the same length at the same position and
uniform noise in the same L_inf ball, nothing optimised (:func:`random_control`).
If the optimised release routes answer attention differently from the control on
a victim fine-tuned on it, the optimisation (not the mere presence of extra
tokens) did something.

:func:`fig9_summary` turns a :func:`mechanism_metrics` result into the paper's
Fig. 9 categories, each averaged over the measured layers (attention shares in [0, 1]).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..data import VQASample
from ..triggers import answer_words, insert_trigger

__all__ = ["random_control", "fig9_summary", "FIG9_KEYS"]

#: summary key -> mechanism_metrics per-layer key (layer-averaged in :func:`fig9_summary`)
FIG9_KEYS = {
    "answer_to_trigger": "mass_answer_to_trigger",
    "answer_to_perturbation": "mass_answer_to_perturbation",
    "answer_to_perturbation_clean": "mass_answer_to_perturbation_clean",
    "trigger_to_perturbation": "mass_trigger_to_perturbation",
    "answer_to_other_image": "mass_answer_to_other_image",
    "answer_to_other_image_clean": "mass_answer_to_other_image_clean",
    "answer_to_text": "mass_answer_to_text",
    "answer_to_text_clean": "mass_answer_to_text_clean",
    "answer_to_answer": "mass_answer_to_answer",
    "answer_to_answer_clean": "mass_answer_to_answer_clean",
}
#: scalar keys copied as they are
SCALAR_KEYS = ("tv", "eta", "tv_bound", "bound_holds", "eta_delta", "tv_bound_delta", "bound_holds_delta",
               "n_perturbed")


def random_control(clean: Sequence[VQASample], protected: Sequence[VQASample], vocabulary, eps: float,
                   seed: int = 0) -> List[VQASample]:
    """The unoptimised twin of a release: per sample, as many random trigger words as the protected sample's
    trigger, at its position, and i.i.d. uniform noise in [-eps, eps] on every pixel where the protected image
    differs from the clean one anywhere (an image-untouched sample stays untouched).

    Args:
        clean: the clean samples (uint8 (H, W, 3) images).
        protected: the release, aligned with ``clean``; triggers read from ``meta["trigger"]``
            (``words``, ``position``).
        vocabulary: a :class:`toolkit.triggers.Vocabulary` (e.g. the defense surrogate's
            ``trigger_vocabulary()``); words of any answer in ``clean`` are never drawn.
        eps: L_inf budget in [0, 1] units (8/255 for MMGuard).
        seed: numpy seed of the draws.

    Returns:
        samples with the control image, question and ``meta["trigger"]`` (words, position, span).
    """
    if len(clean) != len(protected):
        raise ValueError(f"{len(clean)} clean samples, {len(protected)} protected")
    vocab = vocabulary.without(answer_words(clean))
    if not len(vocab):
        raise ValueError("no admissible trigger word left after removing the answers' words")
    rng = np.random.default_rng(seed)
    out = []
    for c, p in zip(clean, protected):
        image = c.image
        if not np.array_equal(p.image, c.image):
            noise = rng.uniform(-eps, eps, size=c.image.shape)
            levels = int(np.floor(eps * 255.0 + 1e-6))  # the release's uint8 budget, as Defense.protect enforces it
            src = c.image.astype(np.int16)
            proposal = np.round(np.clip(c.image / 255.0 + noise, 0, 1) * 255.0).astype(np.int16)
            image = np.clip(np.clip(proposal, src - levels, src + levels), 0, 255).astype(np.uint8)
        trig = p.meta.get("trigger") or {}
        words = [vocab.words[j] for j in rng.integers(0, len(vocab), size=len(trig.get("words") or []))]
        meta = {k: v for k, v in p.meta.items() if k != "trigger"}
        question = c.question
        if words:
            question, span, _ = insert_trigger(c.question, words, trig.get("position", "start"))
            meta["trigger"] = {"words": words, "position": trig.get("position", "start"), "span": list(span)}
        out.append(c.with_(image=image, question=question, meta=meta))
    return out


def fig9_summary(metrics: Dict[str, object]) -> Dict[str, float]:
    """Layer-averaged Fig. 9 categories and the scalars of a :func:`mechanism_metrics` result
    (attention shares in [0, 1]; NaN for a category the surrogate could not measure)."""
    out: Dict[str, float] = {}
    for name, key in FIG9_KEYS.items():
        values = metrics.get(key) or []
        out[name] = float(np.mean(values)) if len(values) else float("nan")
    for key in SCALAR_KEYS:
        out[key] = float(metrics[key]) if key in metrics else float("nan")
    return out

