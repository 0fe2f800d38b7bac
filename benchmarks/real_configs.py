"""Random-init models with the real configurations of LLaVA-1.5-7B and Qwen2.5-VL-7B (no weights needed).

Used by ``gpu_check.py``: each model is the tiny family's folder (tokenizer, chat template, processor) with
the real model's vision and language sizes written into its config and, for Qwen2.5-VL, a processor with
the real patch 14 / merge 2 at a fixed 448 x 448 input (256 image tokens); LLaVA-1.5 sees 336 x 336 (576 image
tokens). The weights are drawn at random directly on the device in the requested dtype
(:class:`RandomInit` overrides the surrogate's ``load_model``), so nothing is downloaded and nothing large
is written to disk. The sizes are the published configs' (LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B;
Qwen2.5-VL-7B: its 32-block windowed ViT + Qwen2.5-7B); the tokenizer is the tiny one (ids < 1,000 of the
real vocabularies), which changes nothing in the cost of a step.

``scale="dry"`` keeps each model's input geometry (image tokens, sequence length) and shrinks depth and
widths, so the same code runs in seconds on a CPU (the test suite's dry run).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

#: model -> (tiny family, input side, {scale: {"vision": ..., "text": ..., "top": ...}})
REAL_CONFIGS: Dict[str, Tuple[str, int, Dict[str, Dict[str, Dict[str, Any]]]]] = {
    "llava-1.5-7b": ("llava", 336, {
        "real": {"vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                image_size=336, patch_size=14, projection_dim=768),
                 "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                              num_key_value_heads=32, max_position_embeddings=4096, vocab_size=32064),
                 "top": dict(vision_feature_layer=-2, projector_hidden_act="gelu", image_seq_length=576)},
        "dry": {"vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               image_size=336, patch_size=14, projection_dim=64),
                "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, max_position_embeddings=4096),
                "top": dict(vision_feature_layer=-2, projector_hidden_act="gelu", image_seq_length=576)},
    }),
    "qwen2.5-vl-7b": ("qwen2_5_vl", 448, {
        "real": {"vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                                fullatt_block_indexes=[7, 15, 23, 31]),
                 "text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                              num_key_value_heads=4, max_position_embeddings=128000, vocab_size=152064,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                               "mrope_section": [16, 24, 24]}),
                 "top": {}},
        "dry": {"vision": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[1]),
                "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=4096,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                              "mrope_section": [4, 6, 6]}),
                "top": {}},
    }),
}


def build_real_config_folder(name: str, folder: Path, scale: str = "real") -> Tuple[Path, int]:
    """Write the folder of model ``name`` (tiny family's tokenizer and template, the real config) and return it
    with the input side in pixels. No weights are written: load it with :func:`load_random_init`."""
    from transformers import AutoConfig, AutoProcessor

    from toolkit.surrogates.tiny import build_tiny

    family, side, scales = REAL_CONFIGS[name]
    sizes = scales[scale]
    build_tiny(family, folder, seed=0, **({"image_size": side, "patch_size": 14} if family == "llava" else {}))
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    for key, value in sizes["vision"].items():
        setattr(config.vision_config, key, value)
    for key, value in sizes["text"].items():
        setattr(config.text_config, key, value)
    for key, value in sizes["top"].items():
        setattr(config, key, value)
    config.save_pretrained(folder)
    if family == "qwen2_5_vl":  # the real patch 14 / merge 2 at a fixed input size
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        for part in (processor.image_processor, getattr(processor, "video_processor", None)):
            if part is not None:
                part.patch_size, part.merge_size = 14, 2
        processor.image_processor.size = {"shortest_edge": side * side, "longest_edge": side * side}
        processor.image_processor.min_pixels = processor.image_processor.max_pixels = side * side
        processor.save_pretrained(folder)
    for weights in list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")) + list(folder.glob("*.index.json")):
        weights.unlink()
    return folder, side


def load_random_init(folder: Path, **kwargs: Any):
    """The folder's surrogate with weights drawn at random on its device, in its dtype (seed 0)."""
    import torch

    from toolkit.surrogates import SURROGATES, model_type_of

    base = SURROGATES.get(model_type_of(folder))

    class RandomInit(base):
        """``base`` whose model is built from the folder's config with random weights."""

        def load_model(self, model_class: type) -> torch.nn.Module:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            torch.manual_seed(0)
            with torch.device(self.device):
                return model_class._from_config(config, dtype=self.dtype)

    return RandomInit(path=folder, **kwargs)


def check_real_config(name: str, tmp: Path, device: str, dtype: str, scale: str = "real", n: int = 4) -> Dict[str, Any]:
    """Protect step vs bare forward+backward, one MMGuard-BPH round per sample and peak memory for model
    ``name``, with gradient checkpointing off and on (n samples; see the module docstring)."""
    import torch

    from toolkit import DEFENSES
    from toolkit.data import VQADataset, images_to_tensor
    from toolkit.digits import load_digits_vqa

    from gpu_check import protect_step_timings, timed

    folder, side = build_real_config_folder(name, tmp / name, scale)
    train, _ = load_digits_vqa(image_size=side, seed=0, limit=64)
    samples = list(train)[:n]
    x = images_to_tensor([s.image for s in samples])
    cuda = device.startswith("cuda")

    row: Dict[str, Any] = {"model": name, "scale": scale, "image_side": side, "n": n}
    for ckpt in (False, True):
        s = load_random_init(folder, device=device, dtype=dtype, gradient_checkpointing=ckpt)
        row["parameters"] = int(sum(p.numel() for p in s.model.parameters()))
        row["sequence_length"] = int(s.encode([samples[0].question], [samples[0].answer], (side, side)).input_ids.shape[1])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with s.frozen():
            t_bare, t_step = protect_step_timings(s, x, samples, device, repeats=3)
        step_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        defense = DEFENSES.create("mmguard_bph", rounds=1, train_steps=1, pgd_steps=1, batch_size=2, pgd_batch_size=n,
                                  eval_size=n, max_trigger_tokens=5, trigger_candidates=8)
        data = VQADataset(samples, name="real-config")
        t_round = timed(lambda: defense.protect(data, [s]), device, 1)
        key = "ckpt_on" if ckpt else "ckpt_off"
        row[key] = {"bare_ms_per_sample": 1e3 * t_bare / n, "protect_step_ratio": t_step / t_bare,
                    "bph_round_s_per_sample": t_round / n, "bph_round_ratio": t_round / t_bare,
                    "peak_mib_protect_step": step_peak,
                    "peak_mib_bph_round": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}
        s = None  # free the model before the next one is built
        if cuda:
            torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    return row
