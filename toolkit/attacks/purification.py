"""Diffusion purification (DiffPure, Nie et al. 2022; AVATAR for unlearnable examples, Dolatabadi et al. 2023).

Map the image to [-1, 1], diffuse it forward to time t* (a fraction ``t_star``
of the schedule), run the reverse process back to 0 with a denoising UNet, map
back. Small perturbations drown in the added noise and the denoiser restores
natural-image structure; AVATAR finds t* must grow with the perturbation norm.

Any diffusers ``UNet2DModel`` + scheduler works, loaded from a local folder
(``unet/`` and ``scheduler/`` subfolders, as :func:`train_purifier` writes) or
passed as objects. Without a model, a matrix column trains its own denoiser on
the attacker's clean images first (:func:`train_purifier`; spec ``fit:`` keys
``epochs``, ``timesteps``, ``channels``, ``batch_size``, ``lr``), as an attacker
without a pretrained diffusion model would. diffusers is an optional extra:
``pip install 'mmguard-toolkit[diffusion]'``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..data import VQADataset, VQASample, tensor_to_images
from ..engine import dataset_pixels, gather, make_generator, shape_batches
from ..registry import Config, check_range
from .base import COUNTERMEASURES, Transform

__all__ = ["DiffusionPurification", "train_purifier"]


def _diffusers():
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("diffusion purification needs diffusers: pip install 'mmguard-toolkit[diffusion]'") from exc
    return diffusers


@COUNTERMEASURES.register("diffusion_purification")
class DiffusionPurification(Transform):
    """DiffPure-style purification of the training images.

    Config: ``t_star`` (fraction of the schedule, 0 = identity), ``model`` (local
    folder with ``unet/`` and ``scheduler/``; or call :meth:`set_model`),
    ``batch_size``, ``seed``, ``device``. With no ``model`` the instance must be
    fitted (``needs_fit``): :meth:`fit_from` trains a denoiser on the attacker's
    clean images (``fit`` keys: :func:`train_purifier`'s ``epochs``, ``timesteps``,
    ``channels``, ``batch_size``, ``lr``; seeded by ``seed``).
    """

    fit_keys = frozenset({"epochs", "timesteps", "channels", "batch_size", "lr"})

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        t_star: float = 0.1
        model: str = ""
        batch_size: int = 32
        seed: int = 0
        device: str = "cpu"

        def __post_init__(self) -> None:
            check_range("t_star", self.t_star, 0.0, 1.0)
            check_range("batch_size", self.batch_size, 1, 1 << 20)

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.unet = None
        self.scheduler = None
        #: a column without a model trains its own denoiser on the attacker's clean images
        self.needs_fit = not self.config.model and self.config.t_star > 0
        if self.config.model:
            self.load(self.config.model)

    @classmethod
    def check_fit(cls, fit, models, defenses) -> None:
        """``fit``: positive ``epochs`` / ``timesteps`` / ``channels`` / ``batch_size`` (ints) and ``lr``."""
        for key in ("epochs", "timesteps", "channels", "batch_size"):
            if key in fit and (not isinstance(fit[key], int) or isinstance(fit[key], bool) or fit[key] < 1):
                raise ValueError(f"{key}: a positive integer, got {fit[key]!r}")
        if "lr" in fit and not (isinstance(fit["lr"], (int, float)) and fit["lr"] > 0):
            raise ValueError(f"lr: a positive number, got {fit['lr']!r}")

    #: denoisers trained by :meth:`fit_from` in this process, by (clean images, fit, seed, device): every row
    #: of a matrix column fits on the same clean data, so the denoiser is trained once
    _trained: ClassVar[Dict[str, Tuple[Any, Any]]] = {}

    def fit_from(self, ctx) -> Dict[str, Any]:
        """Train a denoiser on the attacker's clean images (:func:`train_purifier`) and purify with it."""
        clean = list(ctx.clean_data())
        fit = {k: v for k, v in sorted(ctx.fit.items()) if k in self.fit_keys}
        digest = hashlib.sha256(repr((fit, self.config.seed, self.config.device)).encode())
        for s in clean:
            digest.update(s.image.tobytes())
        key = digest.hexdigest()
        if key not in self._trained:
            with tempfile.TemporaryDirectory() as tmp:
                self.load(train_purifier(clean, tmp, seed=self.config.seed, device=self.config.device, **fit))
            self._trained[key] = (self.unet, self.scheduler)
        self.set_model(*self._trained[key])
        return {"purifier_trained_on": len(clean)}

    def load(self, path: Union[str, os.PathLike]) -> "DiffusionPurification":
        """Load ``UNet2DModel`` and ``DDPMScheduler`` from ``path/unet`` and ``path/scheduler``."""
        d = _diffusers()
        path = Path(path)
        if not (path / "unet").is_dir() or not (path / "scheduler").is_dir():
            raise FileNotFoundError(f"{path}: expected 'unet/' and 'scheduler/' subfolders (see train_purifier)")
        return self.set_model(d.UNet2DModel.from_pretrained(path / "unet"),
                              d.DDPMScheduler.from_pretrained(path / "scheduler"))

    def set_model(self, unet, scheduler) -> "DiffusionPurification":
        """Use an in-memory diffusers UNet and scheduler."""
        self.unet = unet.to(self.config.device).eval()
        self.scheduler = scheduler
        return self

    @torch.no_grad()
    def purify(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Purify a (N, 3, H, W) batch in [0, 1]; returns the same shape in [0, 1]."""
        if self.config.t_star == 0:
            return pixels
        if self.unet is None:
            raise RuntimeError("diffusion_purification: give a model (config model=PATH, load() or set_model())")
        total = int(self.scheduler.config.num_train_timesteps)
        t_star = max(1, int(round(self.config.t_star * total)))
        self.scheduler.set_timesteps(total)
        dev = torch.device(self.config.device)
        x = pixels.to(dev) * 2 - 1
        noise = torch.randn(x.shape, generator=generator).to(dev)
        x = self.scheduler.add_noise(x, noise, torch.full((x.shape[0],), t_star - 1, dtype=torch.long, device=dev))
        for t in self.scheduler.timesteps:
            if int(t) >= t_star:
                continue
            eps = self.unet(x, t).sample
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        return ((x.clamp(-1, 1) + 1) / 2).cpu()

    def __call__(self, dataset: VQADataset) -> VQADataset:
        if self.config.t_star == 0:
            return dataset
        gen = make_generator(self.config.seed)
        x = dataset_pixels(dataset)
        out: list = [None] * len(dataset)
        for idx in shape_batches([s.image.shape for s in dataset], self.config.batch_size):
            for i, img in zip(idx.tolist(), tensor_to_images(self.purify(gather(x, idx), gen))):
                out[i] = img
        return dataset.replace_samples([s.with_(image=im) for s, im in zip(dataset, out)],
                                       f"{dataset.name}+{self.name}")


def train_purifier(clean: Sequence[VQASample], out: Union[str, os.PathLike], *, epochs: int = 20,
                   batch_size: int = 32, lr: float = 1e-3, timesteps: int = 200, channels: int = 32,
                   seed: int = 0, device: str = "cpu", progress: bool = False) -> Path:
    """Train a small DDPM denoiser on the attacker's own clean images and save it for purification.

    The UNet has two resolution levels (``channels``, 2 x ``channels``); the
    schedule has ``timesteps`` steps. Images must share one size (a multiple of 4).
    Returns ``out``, holding ``unet/`` and ``scheduler/``.
    """
    d = _diffusers()
    shapes = {s.image.shape for s in clean}
    if len(shapes) != 1:
        raise ValueError(f"train_purifier needs images of one size, got {sorted(shapes)[:3]}")
    h, w, _ = next(iter(shapes))
    if h % 4 or w % 4:
        raise ValueError(f"image size must be a multiple of 4 for the UNet, got {h}x{w}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = d.UNet2DModel(sample_size=(h, w), in_channels=3, out_channels=3, layers_per_block=1,
                             block_out_channels=(channels, 2 * channels),
                             down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    scheduler = d.DDPMScheduler(num_train_timesteps=timesteps)
    unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    gen = make_generator(seed)
    x = dataset_pixels(clean)
    bar = tqdm(range(epochs), desc="train purifier", disable=not progress, leave=False)
    for _ in bar:
        for idx in shape_batches([s.image.shape for s in clean], batch_size, gen):
            x0 = gather(x, idx).to(device) * 2 - 1
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, timesteps, (x0.shape[0],), generator=gen).to(device)
            loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    out = Path(out)
    unet.eval().save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    return out
