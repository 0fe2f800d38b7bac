"""Mechanism metrics: Fig. 9 categories partition answer attention; Omega_delta bound; the random control."""
import math

import numpy as np
import pytest

from toolkit.metrics import mechanism_metrics
from toolkit.metrics.mechanism_evidence import fig9_summary, random_control

EPS = 8 / 255


def _release(data, vocab, seed=0, trigger_words=3, perturb=True):
    """A release shaped like MMGuard's: triggers recorded in meta (and, with ``perturb``, noisy images)."""
    fake = [s.with_(image=(255 - s.image) if perturb else s.image,
                    meta={"trigger": {"words": ["x"] * trigger_words, "position": "start"}}) for s in data]
    return random_control(data, fake, vocab, EPS, seed=seed)


def _partition(m, clean=False):
    keys = (["mass_answer_to_perturbation_clean", "mass_answer_to_other_image_clean", "mass_answer_to_text_clean",
             "mass_answer_to_answer_clean"] if clean else
            ["mass_answer_to_perturbation", "mass_answer_to_other_image", "mass_answer_to_trigger",
             "mass_answer_to_text", "mass_answer_to_answer"])
    return np.sum([m[k] for k in keys], axis=0)


def test_categories_partition_answer_attention(digits_small, llava):
    data = list(digits_small[0][:6])
    prot = _release(data, llava.trigger_vocabulary())
    m = mechanism_metrics(llava, data, prot, layers=2)
    assert len(m["mass_answer_to_text"]) == 2 and len(m["mass_answer_to_other_image_clean"]) == 2
    assert np.allclose(_partition(m), 1.0, atol=1e-4)
    assert np.allclose(_partition(m, clean=True), 1.0, atol=1e-4)
    assert all(v > 0 for v in m["mass_answer_to_text"] + m["mass_answer_to_other_image"])
    assert m["n_perturbed"] == 6 and math.isfinite(m["eta_delta"]) and m["eta_delta"] > 0
    assert 0.0 <= m["tv_bound_delta"] <= 1.0
    assert 0.0 <= m["bound_holds_delta"] <= 1.0
    assert m["bound_holds"] == 1.0  # Pinsker: a consistency check of the code
    s = fig9_summary(m)
    assert s["answer_to_trigger"] == pytest.approx(np.mean(m["mass_answer_to_trigger"]))
    assert s["n_perturbed"] == 6


def test_empty_perturbation_leaves_eta_delta_undefined(digits_small, llava):
    data = list(digits_small[0][:6])
    prot = _release(data, llava.trigger_vocabulary(), perturb=False)  # trigger only: no image token perturbed
    assert all(np.array_equal(p.image, s.image) for p, s in zip(prot, data))
    m = mechanism_metrics(llava, data, prot)
    assert m["n_perturbed"] == 0
    assert math.isnan(m["eta_delta"]) and math.isnan(m["tv_bound_delta"]) and math.isnan(m["bound_holds_delta"])
    assert m["mass_answer_to_perturbation"] == [0.0] and m["mass_trigger_to_perturbation"] == [0.0]
    assert np.allclose(_partition(m), 1.0, atol=1e-4)
    assert math.isfinite(m["tv"]) and m["bound_holds"] == 1.0
    half = [p if i % 2 else p.with_(image=(255 - s.image) // 2 + s.image // 2)
            for i, (p, s) in enumerate(zip(prot, data))]
    assert mechanism_metrics(llava, data, half)["n_perturbed"] == 3


def test_random_control_matches_budget_length_and_position(digits_small, llava):
    data = list(digits_small[0][:8])
    vocab = llava.trigger_vocabulary()
    fake = [s.with_(image=(255 - s.image) if i % 2 else s.image,
                    meta={"trigger": {"words": ["w"] * (1 + i % 3), "position": "start"}}) for i, s in enumerate(data)]
    a, b = random_control(data, fake, vocab, EPS, seed=1), random_control(data, fake, vocab, EPS, seed=1)
    answers = {w.lower() for s in data for w in s.answer.split()}
    for i, (s, c) in enumerate(zip(data, a)):
        words = c.meta["trigger"]["words"]
        assert len(words) == 1 + i % 3 and set(words) <= set(vocab.words) and not {w.lower() for w in words} & answers
        assert c.question == " ".join(words) + " " + s.question and c.answer == s.answer
        start, end = c.meta["trigger"]["span"]
        assert c.question[start:end] == " ".join(words)
        diff = np.abs(c.image.astype(int) - s.image.astype(int))
        assert diff.max() <= 8 and (diff.max() > 0) == bool(i % 2)  # noise only where the release perturbed
    assert [c.question for c in a] == [c.question for c in b]  # seeded
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
