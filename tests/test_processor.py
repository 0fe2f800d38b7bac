from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data as skdata
from transformers import CLIPImageProcessor
from transformers.models.clip import CLIPImageProcessorPil

from toolkit.surrogates.processing import DifferentiableClipProcessor, normalisation_settings, round_ste


def _images():
    rng = np.random.default_rng(0)
    return {
        "astronaut_crop": skdata.astronaut()[:300, :400],
        "chelsea": skdata.chelsea(),
        "digit_block": np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8),
        "tall_noise": rng.integers(0, 255, (50, 20, 3)).astype(np.uint8),
    }


@pytest.mark.parametrize("backend", [CLIPImageProcessor, CLIPImageProcessorPil])
@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("name", list(_images()))
def test_matches_real_processor_within_rounding(backend, size, name):
    image = _images()[name]
    real = backend(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    expected = real(images=image, return_tensors="pt")["pixel_values"]
    ours = DifferentiableClipProcessor.from_hf(real)
    got = ours(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert got.shape == expected.shape
    std = torch.tensor(real.image_std).view(1, 3, 1, 1)
    levels = ((got - expected) * std * 255).abs()
    # torchvision's and PIL's uint8 kernels use fixed-point weights: up to 2 levels on a few pixels
    assert levels.max() <= 2.0 + 1e-3, f"max difference {levels.max():.2f} uint8 levels"
    assert levels.mean() < 0.15


def test_identity_size_is_exact():
    image = _images()["digit_block"]
    real = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = real(images=image, return_tensors="pt")["pixel_values"]
    got = DifferentiableClipProcessor.from_hf(real)(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(got, expected, atol=1e-5)


def test_gradient_reaches_raw_pixels_through_resize():
    real = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = DifferentiableClipProcessor.from_hf(real)
    x = torch.rand(2, 3, 70, 90, requires_grad=True)
    proc(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_round_ste_forward_rounds_backward_identity():
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.tensor([0.0, 2.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(2))


def test_settings_reader_defaults_scalars_and_resize_switch():
    real = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_resize=False)
    assert normalisation_settings(real, resize=True) == {
        "rescale_factor": 1 / 255, "mean": tuple(real.image_mean), "std": tuple(real.image_std),
        "do_rescale": True, "do_normalize": True, "do_resize": False}
    bare = SimpleNamespace(image_mean=0.5, image_std=[0.25, 0.5, 1])  # a scalar is repeated per channel
    assert normalisation_settings(bare) == {"rescale_factor": 1 / 255, "mean": (0.5, 0.5, 0.5),
                                            "std": (0.25, 0.5, 1.0), "do_rescale": True, "do_normalize": True}
