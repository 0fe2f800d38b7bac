"""LightShed-style learned detection and removal (after Foerster et al., USENIX Security 2025).

The attacker runs the *public* protection on clean images it owns (``fit.runs``
times, new seeds each time) to get pairs (x, x_p) and trains two small
fully-convolutional nets on them:

- a **detector** d, a binary classifier (protected = 1, clean = 0; binary
  cross-entropy) over the image and its high-pass residual x - blur(x), where an
  L_inf-bounded perturbation lives; its logit map is mean-pooled, its probability
  is the detection score (``detector: classifier``, the default). It trains with
  random flips and shifted crops, on part of the attacker's images: the rest
  (``holdout``, split by image so no held-out image is seen in any run) picks the
  epoch (early stopping on held-out loss) and the decision threshold;
- a **removal estimator** g of the perturbation, on every pair (g(x_p) ~ x_p - x and
  g(x) ~ 0; loss = L1 + ``ssim_weight`` * (1 - SSIM) on the residual). The release becomes
  x_hat = x - g(x) on every image (``remove: all``) or only on the images the
  detector flags (``remove: detected``). ``detector: residual`` scores an image
  by mean |g(x)| instead (the earlier, weaker score).

The defense arrives as an object (attacks never import defenses).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..data import VQADataset, VQASample
from ..engine import dataset_pixels, gather, make_generator, shape_batches
from ..registry import Config, check_choice, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["LightShed", "PerturbationEstimator", "PerturbationDetector", "highpass", "ssim_torch"]


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


def highpass(x: torch.Tensor) -> torch.Tensor:
    """x - (3x3 box blur of x), reflect-padded: the part of an (N, C, H, W) image a small L_inf noise dominates."""
    return x - F.avg_pool2d(F.pad(x, [1] * 4, mode="reflect"), 3, stride=1)


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


class PerturbationDetector(torch.nn.Module):
    """Binary classifier: image (N, 3, H, W) in [0, 1] -> one logit per image (> 0: protected).

    Its input is the high-pass residual divided by ``eps`` (``inputs="highpass"``), the
    image mapped to [-1, 1] (``"image"``), or both stacked (``"both"``). A full-resolution
    3x3 conv, a stride-2 conv, ``depth - 3`` more 3x3 convs and a 1x1 conv give a logit map
    that is mean-pooled, so evidence spread over the whole image adds up.
    """

    def __init__(self, width: int = 32, depth: int = 4, inputs: str = "both", eps: float = 8 / 255) -> None:
        super().__init__()
        self.inputs, self.eps = inputs, float(eps)
        c_in = 6 if inputs == "both" else 3
        layers = [torch.nn.Conv2d(c_in, width, 3, padding=1), torch.nn.ReLU(),
                  torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 3):
            layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(width, 1, 1))
        self.net = torch.nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.inputs in ("highpass", "both"):
            parts.append(highpass(x) / self.eps)
        if self.inputs in ("image", "both"):
            parts.append(x * 2 - 1)
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(x)).mean((1, 2, 3))


def _augment(batch: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Per image: random horizontal / vertical flip and a crop of the reflect-padded image shifted by up to
    ``shift`` pixels (whole pixels only, so the perturbation's pixel values are never resampled)."""
    out = []
    _, _, h, w = batch.shape
    for x in batch:
        if bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-1)
        if bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-2)
        s = min(shift, h - 1, w - 1)
        if s > 0:
            i, j = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
            x = F.pad(x[None], [s] * 4, mode="reflect")[0, :, i:i + h, j:j + w]
        out.append(x)
    return torch.stack(out)


def _threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The cut between scores that maximises balanced accuracy on (pos, neg); ties: the widest-margin cut."""
    values = np.unique(np.r_[pos, neg])
    if len(values) < 2:
        return float(values[0]) if len(values) else 0.5
    cuts = (values[:-1] + values[1:]) / 2
    bacc = np.array([((pos >= c).mean() + (neg < c).mean()) / 2 for c in cuts])
    best = np.flatnonzero(bacc == bacc.max())
    margins = values[best + 1] - values[best]
    return float(cuts[best[np.argmax(margins)]])


def _auroc(pos: np.ndarray, neg: np.ndarray) -> Optional[float]:
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


@COUNTERMEASURES.register("lightshed")
class LightShed(Transform):
    """Learned detection and removal; ``fit(defense, clean, surrogates)`` first, then apply to the training split.

    Config: the removal estimator's ``epochs``, ``lr`` (Adam), ``batch_size``, ``width``,
    ``depth``, ``ssim_weight``; the detector's ``detector`` (``classifier`` | ``residual``),
    ``det_epochs`` (most epochs), ``det_lr``, ``det_width``, ``det_depth``, ``det_inputs``
    (``both`` | ``highpass`` | ``image``), ``augment`` (random flips and crops shifted by up to
    ``augment_shift`` pixels), ``holdout`` (share of the attacker's images kept out of training
    for early stopping and the threshold), ``patience`` (epochs without a better held-out
    loss); ``remove`` (``all`` | ``detected``); ``seed``. ``score(samples)`` returns detection
    scores (the classifier's probability, or mean |g(x)| with ``detector: residual``).
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
        detector: str = "classifier"
        det_epochs: int = 60
        det_lr: float = 2e-3
        det_width: int = 32
        det_depth: int = 4
        det_inputs: str = "both"
        augment: bool = True
        augment_shift: int = 4
        holdout: float = 0.2
        patience: int = 10
        remove: str = "all"
        seed: int = 0

        def __post_init__(self) -> None:
            check_range("epochs", self.epochs, 1, 100_000)
            check_range("lr", self.lr, 0, 1, low_open=True)
            check_range("batch_size", self.batch_size, 1, 1 << 20)
            check_range("width", self.width, 1, 4096)
            check_range("depth", self.depth, 2, 64)
            check_range("ssim_weight", self.ssim_weight, 0, 100)
            check_choice("detector", self.detector, {"classifier", "residual"})
            check_range("det_epochs", self.det_epochs, 1, 100_000)
            check_range("det_lr", self.det_lr, 0, 1, low_open=True)
            check_range("det_width", self.det_width, 1, 4096)
            check_range("det_depth", self.det_depth, 3, 64)
            check_choice("det_inputs", self.det_inputs, {"both", "highpass", "image"})
            if not isinstance(self.augment, bool):
                raise ValueError(f"augment must be true or false, got {self.augment!r}")
            check_range("augment_shift", self.augment_shift, 0, 64)
            check_range("holdout", self.holdout, 0, 0.9)
            check_range("patience", self.patience, 1, 100_000)
            check_choice("remove", self.remove, {"all", "detected"})
            for name in ("epochs", "batch_size", "width", "depth", "det_epochs", "det_width", "det_depth",
                         "augment_shift", "patience"):
                if not isinstance(getattr(self, name), int):
                    raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.estimator: Optional[PerturbationEstimator] = None
        self.detector: Optional[PerturbationDetector] = None
        #: the decision threshold of the configured score (chosen on the held-out pairs)
        self.threshold: Optional[float] = None
        #: the estimator's mean loss per epoch
        self.history: list = []
        #: the detector's per-epoch {train_loss, holdout_loss, holdout_auroc}
        self.detector_history: List[Dict[str, Any]] = []
        #: what fitting measured on the attacker's own held-out pairs
        self.fit_info: Dict[str, Any] = {}

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
        """The attacker re-runs the imitated defense (``fit.defense``) with seed + 1000 (+ k for run k) on its
        clean images, with ``fit.surrogates`` (default the defense's own), ``fit.runs`` times, and trains the
        detector and the estimator; reports the configured detector's AUROC on the owner's released vs
        original training images (``detection_auroc``; the other score's as ``detection_auroc_<kind>``), the
        shares flagged at the attacker's threshold, and the held-out AUROC the attacker itself saw."""
        imitated = ctx.imitated_defense()
        if imitated.name is None:
            raise ValueError("lightshed: the clean row has no defense to imitate; name a defense row with "
                             "fit.defense")
        defense = ctx.make_defense(imitated, ctx.seed + 1000)
        models = [ctx.load_model(n) for n in (ctx.fit.get("surrogates") or imitated.surrogates)]
        if imitated.weights is not None and not ctx.fit.get("surrogates"):
            models = [ctx.ensemble(models, imitated.weights)]
        self.fit(defense, ctx.clean_data(), models, runs=int(ctx.fit.get("runs", 1)))
        info = {f"lightshed_{k}": v for k, v in self.fit_info.items()}
        if ctx.released is None or ctx.owner_train is None:
            return info
        released, owner = list(ctx.released), list(ctx.owner_train)
        pos, neg = self.score(released), self.score(owner)
        info["detection_auroc"] = _auroc(pos, neg)
        info["detected_share_released"] = float((pos >= self.threshold).mean())
        info["detected_share_clean"] = float((neg >= self.threshold).mean())
        other = "residual" if self.config.detector == "classifier" else "classifier"
        if other == "residual" or self.detector is not None:
            info[f"detection_auroc_{other}"] = _auroc(self.score(released, other), self.score(owner, other))
        return info

    def fit(self, defense, clean: VQADataset, surrogates: Sequence = (), runs: int = 1) -> "LightShed":
        """Protect the attacker's ``clean`` images with the public ``defense`` and train the nets.

        ``runs`` > 1 protects them that many times with consecutive seeds (the
        defense's class with its config, seed + k), so the nets see several
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

    def _split(self, ids: Sequence[str]):
        """(train, held-out) pair indices, split by source image (the id before ``#run``)."""
        sources = sorted({i.split("#")[0] for i in ids})
        n_out = int(round(self.config.holdout * len(sources)))
        if len(sources) < 4 or n_out < 2:
            return list(range(len(ids))), []
        order = torch.randperm(len(sources), generator=make_generator(self.config.seed + 1)).tolist()
        out = {sources[i] for i in order[:n_out]}
        held = [k for k, i in enumerate(ids) if i.split("#")[0] in out]
        return [k for k, i in enumerate(ids) if i.split("#")[0] not in out], held

    def fit_pairs(self, clean: Sequence[VQASample], protected: Sequence[VQASample], eps: float) -> "LightShed":
        """Train on aligned (clean, protected) samples; ``eps`` bounds the estimator's output and scales the
        detector's high-pass input. The estimator trains on every pair; the classifier on the pairs of
        ``1 - holdout`` of the images (pairs whose ids share the part before ``#`` come from one image), the
        rest choosing its epoch and threshold."""
        if len(clean) != len(protected) or not len(clean):
            raise ValueError(f"fit_pairs: aligned non-empty lists, got {len(clean)} and {len(protected)}")
        cfg = self.config
        x, xp = dataset_pixels(clean), dataset_pixels(protected)
        shapes = [tuple(t.shape) for t in x]
        train, held = self._split([s.id for s in clean])
        self.history, self.detector_history = [], []
        everything = list(range(len(x)))
        self._fit_estimator(x, xp, shapes, everything, eps)  # removal learns from every pair
        info: Dict[str, Any] = {"pairs": len(train), "holdout_pairs": len(held)}
        if cfg.detector == "classifier":
            self._fit_detector(x, xp, shapes, train, held, eps)
            if held:
                pos, neg = self._scores([xp[i] for i in held]), self._scores([x[i] for i in held])
                self.threshold = _threshold(pos, neg)
                info["holdout_auroc"] = _auroc(pos, neg)
            else:
                self.threshold = 0.5
        else:  # the estimator saw every pair: its threshold is fitted on them all (no held-out estimate)
            self.detector = None
            self.threshold = _threshold(self._scores(xp), self._scores(x))
            info = {"pairs": len(x), "holdout_pairs": 0}
        info["threshold"] = self.threshold
        self.fit_info = info
        return self

    def _fit_estimator(self, x, xp, shapes, train, eps) -> None:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.estimator = PerturbationEstimator(cfg.width, cfg.depth, scale=eps)
        opt = torch.optim.Adam(self.estimator.parameters(), lr=cfg.lr)
        gen = make_generator(cfg.seed)
        for _ in range(cfg.epochs):
            total = 0.0
            for idx in shape_batches(shapes, cfg.batch_size, gen, indices=torch.tensor(train)):
                xc, xq = gather(x, idx), gather(xp, idx)
                residual = xq - xc
                pred_p, pred_c = self.estimator(xq), self.estimator(xc)
                loss = (F.l1_loss(pred_p, residual) + F.l1_loss(pred_c, torch.zeros_like(pred_c))
                        + cfg.ssim_weight * (1 - ssim_torch(pred_p, residual, data_range=2 * eps)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.history.append(total / len(train))
        self.estimator.eval()

    def _fit_detector(self, x, xp, shapes, train, held, eps) -> None:
        """BCE on protected (1) vs clean (0), augmented; keeps the epoch with the lowest held-out loss."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 2)
            self.detector = PerturbationDetector(cfg.det_width, cfg.det_depth, cfg.det_inputs, eps)
        # both images of every training pair are examples; item k < n is clean, k >= n protected
        n = len(x)
        images, labels = x + xp, torch.cat([torch.zeros(n), torch.ones(n)])
        items = torch.tensor(train + [k + n for k in train])
        opt = torch.optim.Adam(self.detector.parameters(), lr=cfg.det_lr)
        gen = make_generator(cfg.seed + 3)
        shift = cfg.augment_shift if cfg.augment else 0
        best, best_loss, stale = None, float("inf"), 0
        for _ in range(cfg.det_epochs):
            self.detector.train()
            total = 0.0
            for idx in shape_batches(shapes + shapes, cfg.batch_size, gen, indices=items):
                batch = gather(images, idx)
                if cfg.augment:
                    batch = _augment(batch, gen, shift)
                loss = F.binary_cross_entropy_with_logits(self.detector(batch), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            record: Dict[str, Any] = {"train_loss": total / len(items)}
            if held:
                self.detector.eval()
                pos_logit = self._logits([xp[i] for i in held])
                neg_logit = self._logits([x[i] for i in held])
                logits = torch.cat([pos_logit, neg_logit])
                target = torch.cat([torch.ones(len(pos_logit)), torch.zeros(len(neg_logit))])
                held_loss = float(F.binary_cross_entropy_with_logits(logits, target))
                record.update(holdout_loss=held_loss, holdout_auroc=_auroc(pos_logit.numpy(), neg_logit.numpy()))
                if held_loss < best_loss - 1e-6:
                    best, best_loss, stale = copy.deepcopy(self.detector.state_dict()), held_loss, 0
                else:
                    stale += 1
            self.detector_history.append(record)
            if held and stale >= cfg.patience:
                break
        if best is not None:
            self.detector.load_state_dict(best)
        self.detector.eval()

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def _logits(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.empty(len(pixels))
        for idx in shape_batches([tuple(t.shape) for t in pixels], 64):
            out[idx] = self.detector(gather(pixels, idx))
        return out

    @torch.no_grad()
    def _scores(self, pixels: Sequence[torch.Tensor], kind: Optional[str] = None) -> np.ndarray:
        kind = kind or self.config.detector
        if kind == "classifier":
            if self.detector is None:
                raise RuntimeError("lightshed: no classifier was trained (detector: residual)")
            return torch.sigmoid(self._logits(pixels)).numpy()
        est = self._require()
        out = torch.empty(len(pixels))
        for idx in shape_batches([tuple(t.shape) for t in pixels], 64):
            out[idx] = est(gather(pixels, idx)).abs().mean((1, 2, 3))
        return out.numpy()

    def _require(self) -> PerturbationEstimator:
        if self.estimator is None:
            raise RuntimeError("lightshed: call fit(defense, clean_data, surrogates) first")
        return self.estimator

    def score(self, samples: Sequence[VQASample], kind: Optional[str] = None) -> np.ndarray:
        """Detection score per sample, higher = more likely protected: the classifier's probability, or with
        ``kind="residual"`` (or ``detector: residual``) mean |g(x)| in [0, 1] units."""
        self._require()
        return self._scores(dataset_pixels(samples), kind)

    def detect(self, samples: Sequence[VQASample]) -> np.ndarray:
        """Whether each sample's score reaches the threshold chosen at fit time."""
        return self.score(samples) >= self.threshold

    @torch.no_grad()
    def transform_image(self, image: np.ndarray, rng) -> np.ndarray:
        est = self._require()
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        if self.config.remove == "detected" and self._scores([x[0]])[0] < self.threshold:
            return image.copy()
        out = (x - est(x)).clamp(0, 1)
        return (out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
