import numpy as np
import pytest

from toolkit import COUNTERMEASURES, DEFENSES
from toolkit.attacks.lightshed import ssim_torch


def _auroc(pos, neg):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


def test_lightshed_detects_and_removes_noise(digits_small):
    train, test = digits_small
    defense = DEFENSES.create("random_noise", eps=8 / 255, seed=0)
    ls = COUNTERMEASURES.create("lightshed", epochs=150, width=16, seed=0)
    with pytest.raises(RuntimeError, match="fit"):
        ls(train)
    ls.fit(defense, train)  # the attacker's own clean images
    assert ls.history[-1] < ls.history[0]
    held_out = DEFENSES.create("random_noise", eps=8 / 255, seed=5).protect(test).dataset  # unseen noise
    auroc = _auroc(ls.score(held_out), ls.score(test))
    assert auroc >= 0.9, auroc
    cleaned = ls(held_out)
    err_before = np.mean([np.abs(p.image.astype(int) - c.image.astype(int)).mean() for p, c in zip(held_out, test)])
    err_after = np.mean([np.abs(p.image.astype(int) - c.image.astype(int)).mean() for p, c in zip(cleaned, test)])
    assert err_after < err_before
    assert [s.id for s in cleaned] == [s.id for s in held_out]


def test_ssim_torch_matches_identity_and_orders():
    import torch

    a = torch.rand(2, 3, 16, 16)
    assert float(ssim_torch(a, a, 1.0)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim_torch(a, a + 0.01 * torch.randn_like(a), 1.0)) > float(ssim_torch(a, torch.rand_like(a), 1.0))


def test_fit_over_several_defense_runs(digits_small):
    train, _ = digits_small
    ls = COUNTERMEASURES.create("lightshed", epochs=2, width=8, seed=0)
    ls.fit(DEFENSES.create("random_noise", seed=0), train[:10], runs=3)
    assert len(ls.history) == 2
    with pytest.raises(ValueError, match="runs"):
        ls.fit(DEFENSES.create("random_noise"), train[:10], runs=0)
