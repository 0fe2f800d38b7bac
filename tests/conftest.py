"""Shared fixtures: a tiny LLaVA saved once per session, small digits splits."""
from __future__ import annotations

import os

import pytest
import torch

from toolkit.digits import load_digits_vqa
from toolkit.surrogates import load_surrogate
from toolkit.surrogates.tiny import build_tiny_llava

torch.set_num_threads(int(os.environ.get("MMGUARD_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """Folder of a random-init tiny LLaVA (model + processor, save_pretrained layout)."""
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture()
def llava(tiny_llava_dir):
    """A freshly loaded tiny LLaVA surrogate."""
    return load_surrogate(tiny_llava_dir)


@pytest.fixture(scope="session")
def digits_small():
    """(train, test) digits VQA with 60 samples in all, 32x32 RGB."""
    return load_digits_vqa(image_size=32, limit=60, seed=0)
