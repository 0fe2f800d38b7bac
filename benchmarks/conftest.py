"""Benchmark fixtures: a tiny LLaVA and one batch of digits (CPU, no downloads)."""
import pytest
import torch

from toolkit.data import images_to_tensor
from toolkit.digits import load_digits_vqa
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny_llava

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def llava(tmp_path_factory):
    return load_surrogate(build_tiny_llava(tmp_path_factory.mktemp("bench") / "tiny-llava"))


@pytest.fixture(scope="session")
def batch():
    train, _ = load_digits_vqa(image_size=32, seed=0)
    samples = list(train[:64])
    return images_to_tensor([s.image for s in samples]), samples

