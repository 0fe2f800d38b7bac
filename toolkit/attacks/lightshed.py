"""LightShed-style learned removal and detection (after Foerster et al., USENIX Security 2025).

The attacker runs the *public* protection on clean images it owns to get pairs
(x, x_p), trains a small fully-convolutional estimator g of the perturbation
(g(x_p) ~ x_p - x and g(x) ~ 0; loss = L1 + ``ssim_weight`` * (1 - SSIM) on the
residual), then releases x_hat = x_p - g(x_p) for training. The mean |g(x)| of an
image is a detection score: high on protected images, near zero on clean ones.

The defense arrives as an object (attacks never import defenses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..data import VQADataset, VQASample
from ..engine import dataset_pixels, gather, make_generator, shape_batches
from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["LightShed", "PerturbationEstimator", "ssim_torch"]


def ssim_torch(a: torch.Tensor, b: torch.Tensor, data_range: float, window: int = 7) -> torch.Tensor:
    """Differentiable mean SSIM of two (N, C, H, W) batches with a uniform window (same constants as skimage)."""
    pad = window // 2

    def pooled(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, [pad] * 4, mode="reflect"), window, stride=1)

    mu_a, mu_b = pooled(a), pooled(b)
    var_a = pooled(a * a) - mu_a ** 2
    var_b = pooled(b * b) - mu_b ** 2
    cov = pooled(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


class PerturbationEstimator(torch.nn.Module):
    """Small fully-convolutional net: image (N, 3, H, W) in [0, 1] -> perturbation estimate in [-scale, scale]."""

    def __init__(self, width: int = 32, depth: int = 4, scale: float = 8 / 255) -> None:
        super().__init__()
        layers = [torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(width, 3, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x * 2 - 1)) * self.scale


@COUNTERMEASURES.register("lightshed")
class LightShed(Transform):
    """Learned perturbation removal; ``fit(defense, clean, surrogates)`` first, then apply to the training split.

    Config: ``epochs``, ``lr`` (Adam), ``batch_size``, ``width``, ``depth``,
    ``ssim_weight``, ``seed``. ``score(samples)`` returns detection scores.
    """

    needs_fit = True
    fit_keys = frozenset({"defense", "surrogates", "runs"})

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        epochs: int = 40
        lr: float = 2e-3
        batch_size: int = 32
        width: int = 32
        depth: int = 4
        ssim_weight: float = 0.5
        seed: int = 0

        def __post_init__(self) -> None:
            check_range("epochs", self.epochs, 1, 100_000)
            check_range("lr", self.lr, 0, 1, low_open=True)
            check_range("batch_size", self.batch_size, 1, 1 << 20)
            check_range("width", self.width, 1, 4096)
            check_range("depth", self.depth, 2, 64)
            check_range("ssim_weight", self.ssim_weight, 0, 100)

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.estimator: Optional[PerturbationEstimator] = None
        self.history: list = []

    @classmethod
    def check_fit(cls, fit, models, defenses) -> None:
        """``fit.defense``: ``same`` (default) or a defense label; ``fit.surrogates``: model names (default the
        imitated defense's own); ``fit.runs``: protections of the clean data per fit (default 1)."""
        if fit.get("defense", "same") not in ("same", *defenses):
            raise ValueError(f"defense: 'same' or a defense label, got {fit['defense']!r}")
        for name in fit.get("surrogates") or ():
            if name not in models:
                raise ValueError(f"surrogates: unknown model {name!r}")
        runs = fit.get("runs", 1)
        if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
            raise ValueError(f"runs: an integer >= 1, got {runs!r}")

    def fit_identity(self, ctx) -> Dict[str, Any]:
        imitated = ctx.imitated_defense()
        names = ctx.fit.get("surrogates") or imitated.surrogates
        return {"defense": [imitated.name, imitated.config, imitated.weights],
                "surrogates": [ctx.model_identity(n) for n in names]}

    def fit_from(self, ctx) -> Dict[str, Any]:
        """The attacker re-runs the imitated defense (``fit.defense``) with seed + 1000 on its clean images,
        with ``fit.surrogates`` (default the defense's own), ``fit.runs`` times, and trains the estimator;
        reports the detector's AUROC on the owner's released vs original training images."""
        imitated = ctx.imitated_defense()
        if imitated.name is None:
            raise ValueError("lightshed: the clean row has no defense to imitate; name a defense row with "
                             "fit.defense")
        defense = ctx.make_defense(imitated, ctx.seed + 1000)
        models = [ctx.load_model(n) for n in (ctx.fit.get("surrogates") or imitated.surrogates)]
        if imitated.weights is not None and not ctx.fit.get("surrogates"):
            models = [ctx.ensemble(models, imitated.weights)]
        self.fit(defense, ctx.clean_data(), models, runs=int(ctx.fit.get("runs", 1)))
        if ctx.released is None or ctx.owner_train is None:
            return {}
        released, owner = list(ctx.released), list(ctx.owner_train)
        scores = list(self.score(released)) + list(self.score(owner))
        return {"detection_auroc": float(roc_auc_score([1] * len(released) + [0] * len(owner), scores))}

    def fit(self, defense, clean: VQADataset, surrogates: Sequence = (), runs: int = 1) -> "LightShed":
        """Protect the attacker's ``clean`` images with the public ``defense`` and train the estimator.

        ``runs`` > 1 protects them that many times with consecutive seeds (the
        defense's class with its config, seed + k), so the estimator sees several
        draws of the protection instead of memorising one.
        """
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        pairs_clean, pairs_protected = [], []
        for k in range(runs):
            run = defense if k == 0 else type(defense)(**{**defense.config.to_dict(), "seed": defense.config.seed + k})
            protected = run.protect(clean, list(surrogates)).dataset
            pairs_clean += [s.with_(id=f"{s.id}#{k}") for s in clean]
            pairs_protected += [s.with_(id=f"{s.id}#{k}") for s in protected]
        return self.fit_pairs(pairs_clean, pairs_protected, eps=defense.config.eps)

    def fit_pairs(self, clean: Sequence[VQASample], protected: Sequence[VQASample], eps: float) -> "LightShed":
        """Train on aligned (clean, protected) samples; ``eps`` bounds the estimator's output."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.estimator = PerturbationEstimator(cfg.width, cfg.depth, scale=eps)
        x, xp = dataset_pixels(clean), dataset_pixels(protected)
        opt = torch.optim.Adam(self.estimator.parameters(), lr=cfg.lr)
        gen = make_generator(cfg.seed)
        shapes = [s.image.shape for s in clean]
        for _ in range(cfg.epochs):
            total = 0.0
            for idx in shape_batches(shapes, cfg.batch_size, gen):
                xc, xq = gather(x, idx), gather(xp, idx)
                residual = xq - xc
                pred_p, pred_c = self.estimator(xq), self.estimator(xc)
                loss = (F.l1_loss(pred_p, residual) + F.l1_loss(pred_c, torch.zeros_like(pred_c))
                        + cfg.ssim_weight * (1 - ssim_torch(pred_p, residual, data_range=2 * eps)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.history.append(total / len(shapes))
        self.estimator.eval()
        return self

    def _require(self) -> PerturbationEstimator:
        if self.estimator is None:
            raise RuntimeError("lightshed: call fit(defense, clean_data, surrogates) first")
        return self.estimator

    @torch.no_grad()
    def transform_image(self, image: np.ndarray, rng) -> np.ndarray:
        est = self._require()
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        out = (x - est(x)).clamp(0, 1)
        return (out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    @torch.no_grad()
    def score(self, samples: Sequence[VQASample]) -> np.ndarray:
        """Detection score per sample: mean |g(x)| in [0, 1] units (higher = more likely protected)."""
        est = self._require()
        return np.array([float(est(torch.tensor(s.image).permute(2, 0, 1)[None].float() / 255).abs().mean())
                         for s in samples])
