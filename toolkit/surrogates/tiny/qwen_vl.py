"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL models (patch ViT + merger + M-RoPE decoder).

Each builder saves a random-init ``Qwen*VLForConditionalGeneration`` and its
real processor (``Qwen2VLImageProcessor`` with a small pixel budget, the
offline BPE tokenizer with the Qwen special tokens, a ChatML template), so
``load_surrogate`` and the real processor run exactly as for a hub checkpoint.

Image grids (raw 32 x 32 input; 30 x 45 in brackets):

* qwen2_vl: patch 6, merge 2, 36 x 36 (36 x 48) after resize -> 9 (12) tokens.
* qwen2_5_vl: patch 4, merge 2, no resize (32 x 48) -> 16 (24) tokens; 2 x 2-token attention windows.
* qwen3_vl: patch 8, merge 2, 48 x 48 (48 x 64) after resize -> 9 (12) tokens; DeepStack at ViT layer 0.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_qwen2_vl", "build_tiny_qwen2_5_vl", "build_tiny_qwen3_vl", "QWEN2_VL_CHAT_TEMPLATE",
           "QWEN3_VL_CHAT_TEMPLATE", "qwen_tokenizer"]


def _chatml(default_system: str) -> str:
    """A ChatML chat template in the Qwen-VL style (images as ``<|vision_start|><|image_pad|><|vision_end|>``)."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
              + default_system + "<|im_end|>\n{% endif %}") if default_system else ""
    return (
        "{% for message in messages %}" + system
        + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


#: Qwen2-VL / Qwen2.5-VL: a default system turn, then ChatML turns.
QWEN2_VL_CHAT_TEMPLATE = _chatml("You are a helpful assistant.")
#: Qwen3-VL (instruct): ChatML turns without a default system turn.
QWEN3_VL_CHAT_TEMPLATE = _chatml("")

_QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def qwen_tokenizer(vocab_size: int = 600, extra_corpus: Sequence[str] = ()):
    """Offline BPE tokenizer with Qwen's special tokens (no BOS; EOS ``<|im_end|>``, pad ``<|endoftext|>``)."""
    return train_tiny_tokenizer(
        vocab_size, extra_corpus=extra_corpus, extra_special=["<|im_start|>", "<|im_end|>", "<|vision_pad|>"], named_tokens=_QWEN_NAMED,
        bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", add_bos=False)


def _token_ids(tokenizer) -> Dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _QWEN_NAMED.items()}
    return {"image_token_id": ids["image_token"], "video_token_id": ids["video_token"],
            "vision_start_token_id": ids["vision_start_token"], "vision_end_token_id": ids["vision_end_token"]}


def _text_kwargs(tokenizer, hidden_size: int, num_layers: int, mrope_section) -> Dict[str, Any]:
    # M-RoPE sections are given for hidden 64 (4 heads of 16: 8 rotary pairs); scale them with the head size
    if hidden_size % 64:
        raise ValueError(f"hidden_size must be a multiple of 64 for the M-RoPE sections, got {hidden_size}")
    mrope_section = [int(m) * (hidden_size // 64) for m in mrope_section]
    return dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def _save(path: Union[str, os.PathLike], model, processor, tokenizer) -> Path:
    return save_tiny(path, model, processor, tokenizer, clear_bos=True)


def _image_processor(patch_size: int, min_side: int, max_side: int, **kw: Any):
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size={"shortest_edge": min_side * min_side, "longest_edge": max_side * max_side},
                                 patch_size=patch_size, merge_size=2, temporal_patch_size=2, **kw)


@register_tiny("qwen2_vl")
def build_tiny_qwen2_vl(path: Union[str, os.PathLike], *, seed: int = 0, hidden_size: int = 64,
                        num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
                        patch_size: int = 6, vocab_size: int = 600, min_side: int = 36, max_side: int = 48,
                        extra_corpus: Sequence[str] = ()) -> Path:
    """Build a random-init tiny ``Qwen2VLForConditionalGeneration`` and save it with a ``Qwen2VLProcessor``.

    Pixel budget ``min_side``^2 .. ``max_side``^2 (default 36^2 .. 48^2) with patch 6 and merge 2
    (sides multiples of 12), so a 32 x 32 image is upscaled to 36 x 36 (exercising the resize)
    and gives 9 tokens. ``extra_corpus``: further tokenizer training lines.
    """
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                              Qwen2VLTextConfig, Qwen2VLVideoProcessor, Qwen2VLVisionConfig)

    tokenizer = qwen_tokenizer(vocab_size, extra_corpus)
    processor = Qwen2VLProcessor(
        image_processor=_image_processor(patch_size, min_side, max_side), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN2_VL_CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=Qwen2VLTextConfig(**_text_kwargs(tokenizer, hidden_size, num_layers, (2, 3, 3))),
        vision_config=Qwen2VLVisionConfig(
            depth=vision_layers, embed_dim=vision_hidden_size, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
            patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2),
        **_token_ids(tokenizer))
    model = seeded_init(Qwen2VLForConditionalGeneration, config, seed)
    return _save(path, model, processor, tokenizer)


@register_tiny("qwen2_5_vl")
def build_tiny_qwen2_5_vl(path: Union[str, os.PathLike], *, seed: int = 0, hidden_size: int = 64,
                          num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
                          patch_size: int = 4, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``Qwen2_5_VLForConditionalGeneration`` and save it with its processor.

    Patch 4, merge 2, pixel budget 32^2 .. 64^2: a 32 x 32 image is used as is
    (16 tokens). The ViT's first layer attends within 16-pixel windows (2 x 2
    merged tokens), the last one globally, as in Qwen2.5-VL.
    """
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLVideoProcessor)
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

    tokenizer = qwen_tokenizer(vocab_size)
    processor = Qwen2_5_VLProcessor(
        image_processor=_image_processor(patch_size, 32, 64), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN2_VL_CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=Qwen2_5_VLTextConfig(**_text_kwargs(tokenizer, hidden_size, num_layers, (2, 3, 3))),
        vision_config=Qwen2_5_VLVisionConfig(
            depth=vision_layers, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_heads=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=hidden_size, window_size=4 * patch_size, fullatt_block_indexes=[vision_layers - 1]),
        **_token_ids(tokenizer))
    model = seeded_init(Qwen2_5_VLForConditionalGeneration, config, seed)
    return _save(path, model, processor, tokenizer)


@register_tiny("qwen3_vl")
def build_tiny_qwen3_vl(path: Union[str, os.PathLike], *, seed: int = 0, hidden_size: int = 64,
                        num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
                        patch_size: int = 8, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``Qwen3VLForConditionalGeneration`` and save it with a ``Qwen3VLProcessor``.

    Patch 8, merge 2, mean/std 0.5 (as Qwen3-VL), pixel budget 48^2 .. 64^2: a
    32 x 32 image is upscaled to 48 x 48 (9 tokens). A 4 x 4 learned position
    grid is interpolated to each image's patch grid; ViT layer 0 feeds a
    DeepStack merger whose output is added in language-model layer 0.
    """
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig

    tokenizer = qwen_tokenizer(vocab_size)
    half = [0.5, 0.5, 0.5]
    processor = Qwen3VLProcessor(
        image_processor=_image_processor(patch_size, 48, 64, image_mean=half, image_std=half), tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                              image_mean=half, image_std=half),
        chat_template=QWEN3_VL_CHAT_TEMPLATE)
    text = _text_kwargs(tokenizer, hidden_size, num_layers, (4, 2, 2))
    text["rope_parameters"]["mrope_interleaved"] = True
    config = Qwen3VLConfig(
        text_config=Qwen3VLTextConfig(head_dim=hidden_size // 4, **text),
        vision_config=Qwen3VLVisionConfig(
            depth=vision_layers, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_heads=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=hidden_size, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        **_token_ids(tokenizer))
    model = seeded_init(Qwen3VLForConditionalGeneration, config, seed)
    return _save(path, model, processor, tokenizer)
