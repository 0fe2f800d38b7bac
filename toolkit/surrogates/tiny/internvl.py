"""Tiny InternVL model (InternViT + pixel shuffle + MLP projector + Qwen2), dynamic tiling on 16 px tiles."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_internvl", "INTERNVL_CHAT_TEMPLATE"]

# ChatML, the image placeholder on its own line before the text (as InternVL's template writes it)
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@register_tiny("internvl")
def build_tiny_internvl(path: Union[str, os.PathLike], *, tile: int = 16, patch_size: int = 4, max_tiles: int = 6,
                        hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 64,
                        vision_layers: int = 1, seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``InternVLForConditionalGeneration`` and save it with its processor.

    Tiles are ``tile`` px, ``patch_size`` px patches, pixel shuffle 0.5, so
    (tile / patch_size / 2)^2 = 4 ``<IMG_CONTEXT>`` tokens per tile; at most
    ``max_tiles`` tiles plus a thumbnail (a 32x32 image: 2x2 + thumbnail = 20
    tokens; 30x45: 3x2 + thumbnail = 28 tokens). The processor is a real
    ``InternVLProcessor`` (GOT-OCR2 image processor with ``crop_to_patches``,
    the BPE tokenizer with ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, a ChatML template).

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig, Qwen2Config)

    path = Path(path)
    tokenizer = train_tiny_tokenizer(
        vocab_size, named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                  "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        extra_special=["<|im_start|>"], bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", add_bos=False)
    image_processor = GotOcr2ImageProcessor(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=max_tiles)
    video_processor = InternVLVideoProcessor(size={"height": tile, "width": tile})
    per_tile = (tile // patch_size // 2) ** 2
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, image_seq_length=per_tile,
                                  chat_template=INTERNVL_CHAT_TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_attention_heads=4, image_size=tile, patch_size=patch_size),
        text_config=Qwen2Config(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=per_tile,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = seeded_init(InternVLForConditionalGeneration, config, seed)
    return save_tiny(path, model, processor, tokenizer)
