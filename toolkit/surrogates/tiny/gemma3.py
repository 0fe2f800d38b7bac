"""Tiny Gemma 3 style model (SigLIP ViT + pooled soft tokens + Gemma 3 text)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from .common import register_tiny, save_tiny, seeded_init, train_tiny_tokenizer

__all__ = ["build_tiny_gemma3", "GEMMA3_CHAT_TEMPLATE"]

# The Gemma 3 instruction format (system turn and tool calls left out):
# "<bos><start_of_turn>user\n<start_of_image>question<end_of_turn>\n<start_of_turn>model\n"
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@register_tiny("gemma3")
def build_tiny_gemma3(path: Union[str, os.PathLike], *, image_size: int = 32, patch_size: int = 4,
                      tokens_per_side: int = 4, hidden_size: int = 64, num_layers: int = 2,
                      vision_hidden_size: int = 32, vision_layers: int = 1, seed: int = 0,
                      vocab_size: int = 600, extra_corpus: Sequence[str] = ()) -> Path:
    """Build a random-init tiny ``Gemma3ForConditionalGeneration`` and save it with its processor.

    SigLIP ViT at ``image_size`` px with ``patch_size`` px patches, average-pooled to
    ``tokens_per_side ** 2`` soft tokens (16 by default, each covering 8 x 8 px),
    a Gemma 3 text model (one sliding-window and one global layer) and a real
    ``Gemma3Processor`` (Gemma 3 image processor, pan-and-scan off; BPE tokenizer
    with the Gemma 3 special tokens; a Gemma 3 style chat template).

    The projection matrix, zero at transformers' init, is given random weights
    so the image reaches the loss (:func:`toolkit.surrogates.gemma3.wake_gemma3_projector`).
    ``extra_corpus``: further tokenizer training lines.
    """
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    from ..gemma3 import wake_gemma3_projector

    if (image_size // patch_size) % tokens_per_side:
        raise ValueError("patches per side must be a multiple of tokens_per_side")
    path = Path(path)
    tokenizer = train_tiny_tokenizer(
        vocab_size, extra_special=["<start_of_turn>", "<end_of_turn>"],
        named_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                      "eoi_token": "<end_of_image>"},
        bos="<bos>", eos="<eos>", pad="<pad>", extra_corpus=extra_corpus)
    n_tokens = tokens_per_side ** 2
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=n_tokens)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = 16
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
            patch_size=patch_size, vision_use_head=False),
        text_config=Gemma3TextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
            query_pre_attn_scalar=head_dim, max_position_embeddings=512, sliding_window=64,
            layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)],
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        mm_tokens_per_image=n_tokens,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    model = seeded_init(Gemma3ForConditionalGeneration, config, seed)
    wake_gemma3_projector(model, seed)
    path = save_tiny(path, model, processor, tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, ids("<end_of_turn>")]
    model.generation_config.save_pretrained(path)  # a turn may also end with <end_of_turn>
    return path
