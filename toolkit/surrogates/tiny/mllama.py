"""Tiny Llama 3.2 Vision style model (tiled ViT + cross-attention Llama)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_mllama", "MLLAMA_CHAT_TEMPLATE"]

# The Llama 3.2 Vision instruction format (system prompt, dates and tools left out):
# "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>question<|eot_id|>"
# "<|start_header_id|>assistant<|end_header_id|>\n\n"
MLLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@register_tiny("mllama")
def build_tiny_mllama(path: Union[str, os.PathLike], *, tile_size: int = 16, max_image_tiles: int = 4,
                      patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2,
                      vision_hidden_size: int = 32, vision_layers: int = 2, vision_global_layers: int = 1,
                      seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``MllamaForConditionalGeneration`` and save it with its processor.

    Tiles of ``tile_size`` px (``(tile_size // patch_size) ** 2`` patches + CLS each),
    up to ``max_image_tiles`` per image (4: the default aspect-ratio table; a
    32 x 32 image fills a 2 x 2 canvas exactly); a local + gated global vision
    transformer whose last and first-layer outputs are concatenated; a Llama
    text model whose last layer is a cross-attention layer; a real
    ``MllamaProcessor`` (Mllama image processor, BPE tokenizer with the Llama 3
    special tokens, a Llama 3.2 Vision style chat template).

    The zero-initialised cross-attention and tile gates are opened
    (:func:`toolkit.surrogates.mllama.wake_mllama_gates`) so the image reaches the loss.
    """
    from transformers import (MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor,
                              MllamaTextConfig, MllamaVisionConfig)

    from ..mllama import wake_mllama_gates

    path = Path(path)
    tokenizer = train_tiny_tokenizer(
        vocab_size,
        extra_special=["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>", "<|python_tag|>"],
        named_tokens={"image_token": "<|image|>"},
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>")
    image_processor = MllamaImageProcessor(size={"height": tile_size, "width": tile_size},
                                           max_image_tiles=max_image_tiles)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=MLLAMA_CHAT_TEMPLATE)
    grids = [[a, b] for a in range(1, max_image_tiles + 1) for b in range(1, max_image_tiles + 1)
             if a * b <= max_image_tiles]
    intermediate = [0]
    config = MllamaConfig(
        vision_config=MllamaVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_global_layers=vision_global_layers, attention_heads=2,
            image_size=tile_size, patch_size=patch_size, max_num_tiles=max_image_tiles,
            intermediate_layers_indices=intermediate, supported_aspect_ratios=grids,
            vision_output_dim=vision_hidden_size * (len(intermediate) + 1)),
        text_config=MllamaTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
            cross_attention_layers=[num_layers - 1], max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    model = seeded_init(MllamaForConditionalGeneration, config, seed)
    wake_mllama_gates(model)
    return save_tiny(path, model, processor, tokenizer)
