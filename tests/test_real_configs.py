"""The GPU check's real-size models (benchmarks/real_configs.py), at dry scale on CPU: the folder carries the
published sizes' geometry, the random-init surrogate loads without weights and runs a finite loss with a
non-zero image gradient; the real scale's config has the published sizes (checked without building it)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_configs import REAL_CONFIGS, build_real_config_folder, load_random_init  # noqa: E402

from toolkit.data import images_to_tensor  # noqa: E402
from toolkit.digits import load_digits_vqa  # noqa: E402

IMAGE_TOKENS = {"llava-1.5-7b": 576, "qwen2.5-vl-7b": 256}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_dry_real_config_loads_without_weights(name, tmp_path):
    folder, side = build_real_config_folder(name, tmp_path / name, scale="dry")
    assert not list(folder.glob("*.safetensors"))
    s = load_random_init(folder)
    train, _ = load_digits_vqa(image_size=side, seed=0, limit=20)
    samples = list(train)[:2]
    x = images_to_tensor([t.image for t in samples]).requires_grad_(True)
    batch = s.encode([t.question for t in samples], [t.answer for t in samples], (side, side))
    assert int(batch.image_mask[0].sum()) == IMAGE_TOKENS[name]
    with s.frozen():
        loss = s.loss(x, samples)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and grad.abs().sum() > 0


def test_real_scale_has_the_published_sizes():
    llava = REAL_CONFIGS["llava-1.5-7b"][2]["real"]
    assert (llava["text"]["hidden_size"], llava["text"]["num_hidden_layers"], llava["vision"]["num_hidden_layers"]) == (4096, 32, 24)
    qwen = REAL_CONFIGS["qwen2.5-vl-7b"][2]["real"]
    assert (qwen["text"]["hidden_size"], qwen["text"]["num_hidden_layers"], qwen["vision"]["depth"]) == (3584, 28, 32)
    head_dim = qwen["text"]["hidden_size"] // qwen["text"]["num_attention_heads"]
    assert 2 * sum(qwen["text"]["rope_parameters"]["mrope_section"]) == head_dim
