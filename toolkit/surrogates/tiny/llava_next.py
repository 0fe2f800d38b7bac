"""Tiny LLaVA-NeXT model (CLIP ViT + MLP projector + image_newline + Llama), anyres tiling on 16 px tiles."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_llava_next", "LLAVA_NEXT_CHAT_TEMPLATE"]

# Mistral-instruct style, as the LLaVA-1.6 Mistral checkpoints use: "[INST] <image>\n... [/INST]"
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %} {{ item['text'] }}{% endif %}{% endfor %}"
    "</s>"
    "{% endif %}{% endfor %}"
)


@register_tiny("llava_next")
def build_tiny_llava_next(path: Union[str, os.PathLike], *, tile: int = 16, patch_size: int = 4,
                          pinpoints: Sequence[Sequence[int]] = ((16, 32), (32, 16), (32, 32)),
                          hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 64,
                          vision_layers: int = 1, seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``LlavaNextForConditionalGeneration`` and save it with its processor.

    Tiles are ``tile`` px (a CLIP ViT with ``patch_size`` px patches, so
    (tile / patch_size)^2 = 16 tokens per tile); a 32x32 image uses the 32x32
    canvas (4 tiles + base tile, 88 image tokens), a 30x45 one the same canvas
    with padding that unpadding removes (70 tokens). The processor is a real
    ``LlavaNextProcessor`` with a Mistral-instruct style chat template.

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    path = Path(path)
    grid = [[int(h), int(w)] for h, w in pinpoints]
    tokenizer = train_tiny_tokenizer(vocab_size)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=grid)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        num_additional_image_tokens=1)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_attention_heads=4, image_size=tile, patch_size=patch_size,
            projection_dim=vision_hidden_size),
        text_config=LlamaConfig(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=grid,
        image_seq_length=(tile // patch_size) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = seeded_init(LlavaNextForConditionalGeneration, config, seed)
    return save_tiny(path, model, processor, tokenizer)
