"""LPIPS (Zhang et al. 2018) between clean and protected images, from local weights only.

The MMGuard paper (Zhao et al. 2026) reports LPIPS 0.11 for its protected
images. The distance is computed by the maintained ``lpips`` package (0.1.4):
its network is built with a randomly initialised trunk (``pnet_rand=True``, so
torchvision downloads nothing), the user's torchvision AlexNet (``net: alex``)
or VGG16 (``net: vgg``) ``state_dict`` file (``backbone``) is loaded into the
trunk, and the learned linear layers come from the weights the ``lpips`` package
ships in its wheel (v0.1), or from the file ``linear`` names.

Images are uint8 HxWx3, mapped to [-1, 1] as LPIPS expects. AlexNet's fifth
layer needs a side of at least 31 px (VGG16: 16 px), so an image pair whose
shorter side is under ``min_size`` (default 64) is first upsampled bilinearly,
both images the same way, to that shorter side; values on such small images
are therefore not comparable to values computed at full resolution.
Lower is more similar (0 for identical images).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..registry import Config, check_choice
from .base import METRICS
from .image import ImageMetric

__all__ = ["LPIPS", "load_lpips"]

_HOW = ("LPIPS needs local backbone weights: a torchvision {net} state_dict file, e.g. saved once with "
        "torch.save(torchvision.models.{tv}(weights=...).state_dict(), '{tv}.pth'); give it as "
        "LPIPS(backbone=PATH) or in a matrix spec as metrics: [{{name: lpips, config: {{backbone: PATH}}}}]; "
        "nothing is downloaded")
_TORCHVISION = {"alex": "alexnet", "vgg": "vgg16"}


def load_lpips(backbone: str, net: str = "alex", linear: Optional[str] = None):
    """An ``lpips.LPIPS`` module (eval mode, CPU) whose trunk holds the torchvision ``backbone`` state_dict
    (``features.*`` keys of ``torchvision.models.alexnet`` / ``vgg16``; classifier keys are ignored) and
    whose linear layers come from ``linear`` (default: the v0.1 weights shipped in the ``lpips`` package)."""
    import lpips
    import torch

    check_choice("net", net, set(_TORCHVISION))
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=True, model_path=linear, verbose=False)
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"backbone: {backbone} holds a {type(state).__name__}, not a state_dict; "
                         + _HOW.format(net=_TORCHVISION[net], tv=_TORCHVISION[net]))
    # the lpips trunk keeps torchvision's layer indices inside its slices: features.3.weight -> slice2.3.weight
    where = {idx: name for name, part in model.net.named_children() for idx in part._modules}
    trunk = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1] in where:
            trunk[f"{where[parts[1]]}.{parts[1]}.{parts[2]}"] = value
    if not trunk:
        raise ValueError(f"backbone: {backbone} has no features.N.* keys, so it is not a torchvision "
                         f"{_TORCHVISION[net]} state_dict; " + _HOW.format(net=_TORCHVISION[net], tv=_TORCHVISION[net]))
    try:
        model.net.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"backbone: {backbone} does not fit a torchvision {_TORCHVISION[net]} ({detail})") from None
    return model.eval()


@METRICS.register("lpips")
class LPIPS(ImageMetric):
    """Mean LPIPS distance (unitless, >= 0; lower is more similar) between clean and protected images.

    Config: ``backbone`` (required) path of a torchvision AlexNet / VGG16 state_dict file; ``net``
    ``alex`` (default) or ``vgg``; ``linear`` optional path of LPIPS linear-layer weights (default: those
    shipped in the ``lpips`` package); ``min_size`` the shorter side small images are upsampled to.
    """

    higher_is_better = False
    path_keys = ("backbone", "linear")

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """See :class:`LPIPS`; a missing or absent ``backbone`` file is a ``ValueError`` saying how to give it."""

        backbone: str = ""
        net: str = "alex"
        linear: str = ""
        min_size: int = 64

        def __post_init__(self) -> None:
            check_choice("net", self.net, set(_TORCHVISION))
            how = _HOW.format(net=_TORCHVISION[self.net], tv=_TORCHVISION[self.net])
            if not self.backbone:
                raise ValueError(f"backbone: not given; {how}")
            if not Path(self.backbone).expanduser().is_file():
                raise ValueError(f"backbone: no file {self.backbone!r}; {how}")
            if self.linear and not Path(self.linear).expanduser().is_file():
                raise ValueError(f"linear: no file {self.linear!r} (leave it out to use the lpips package's weights)")
            if not isinstance(self.min_size, int) or isinstance(self.min_size, bool) or self.min_size < 32:
                raise ValueError(f"min_size must be an int >= 32 (AlexNet needs 31 px), got {self.min_size!r}")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._model = None

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS of one uint8 HxWx3 pair (upsampled first when its shorter side is under ``min_size``)."""
        import torch
        import torch.nn.functional as F

        if self._model is None:
            c = self.config
            self._model = load_lpips(str(Path(c.backbone).expanduser()), c.net,
                                     str(Path(c.linear).expanduser()) if c.linear else None)
        x = torch.from_numpy(np.stack([a, b]).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
        short = min(x.shape[-2:])
        if short < self.config.min_size:
            scale = self.config.min_size / short
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return float(self._model(x[:1], x[1:]).reshape(()))
