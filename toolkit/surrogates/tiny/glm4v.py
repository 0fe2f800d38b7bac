"""Tiny GLM-4V model (``Glm4vForConditionalGeneration``: patch ViT + conv downsample + merger + GLM decoder).

Saved with the real ``Glm4vProcessor`` (``Glm4vImageProcessor`` with a small
pixel budget, the offline BPE tokenizer with GLM's special tokens, a GLM-4V
style chat template). Patch 4, merge 2: a 32 x 32 image is used as is and
gives 16 image tokens (30 x 45 -> 32 x 48 -> 24 tokens).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .common import register_tiny, save_tiny, seeded_init, train_tiny_tokenizer

__all__ = ["build_tiny_glm4v", "GLM4V_CHAT_TEMPLATE", "glm4v_tokenizer"]

#: GLM-4V conversation format: ``[gMASK]<sop><|user|>\n...<|assistant|>\n``; an image is
#: ``<|begin_of_image|><|image|><|end_of_image|>``.
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_GLM_SPECIAL = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]


def glm4v_tokenizer(vocab_size: int = 600):
    """Offline BPE tokenizer with GLM-4V's special tokens (no BOS; EOS and pad ``<|endoftext|>``)."""
    return train_tiny_tokenizer(
        vocab_size, extra_special=_GLM_SPECIAL, named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False)


@register_tiny("glm4v")
def build_tiny_glm4v(path: Union[str, os.PathLike], *, seed: int = 0, hidden_size: int = 128,
                     num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
                     patch_size: int = 4, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``Glm4vForConditionalGeneration`` and save it with a ``Glm4vProcessor``.

    Pixel budget (counted over the 2 temporal copies, as GLM-4V does) 2 * 32^2 ..
    2 * 64^2. The language model uses half-dimension rotary embeddings
    (``partial_rotary_factor`` 0.5) with M-RoPE sections (2, 3, 3), as GLM-4.1V.
    """
    from transformers import (Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessor, Glm4vProcessor,
                              Glm4vVideoProcessor)
    from transformers.models.glm4v.configuration_glm4v import Glm4vTextConfig, Glm4vVisionConfig

    path = Path(path)
    tokenizer = glm4v_tokenizer(vocab_size)
    image_processor = Glm4vImageProcessor(
        size={"shortest_edge": 2 * 32 * 32, "longest_edge": 2 * 64 * 64},
        patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    processor = Glm4vProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2),
        chat_template=GLM4V_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = Glm4vConfig(
        text_config=Glm4vTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                             "mrope_section": [2, 3, 3]},
            pad_token_id=tokenizer.pad_token_id),
        vision_config=Glm4vVisionConfig(
            depth=vision_layers, hidden_size=vision_hidden_size, num_heads=2, image_size=32, patch_size=patch_size,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
            intermediate_size=2 * hidden_size),
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"))
    model = seeded_init(Glm4vForConditionalGeneration, config, seed)
    return save_tiny(path, model, processor, tokenizer, clear_bos=True)
