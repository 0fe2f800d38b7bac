"""Tiny LLaVA-1.5 style model (CLIP ViT + MLP projector + Llama)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from .common import LLAVA_CHAT_TEMPLATE, register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_llava"]


@register_tiny("llava")
def build_tiny_llava(path: Union[str, os.PathLike], *, image_size: int = 32, patch_size: int = 8,
                     hidden_size: int = 128, num_layers: int = 2, vision_hidden_size: int = 64,
                     vision_layers: int = 2, seed: int = 0, vocab_size: int = 600,
                     extra_corpus: Sequence[str] = ()) -> Path:
    """Build a random-init tiny ``LlavaForConditionalGeneration`` and save it with its processor.

    The vision tower is a CLIP ViT, the language model a Llama, joined by the
    LLaVA MLP projector; the processor is a real ``LlavaProcessor`` (CLIP image
    processor at ``image_size``, the BPE tokenizer above, a LLaVA-1.5 chat
    template). ``(image_size // patch_size) ** 2`` image tokens per image.
    ``extra_corpus``: further tokenizer training lines (see :func:`train_tiny_tokenizer`).

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    path = Path(path)
    tokenizer = train_tiny_tokenizer(vocab_size, extra_corpus=extra_corpus)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    n_image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
            patch_size=patch_size, projection_dim=vision_hidden_size),
        text_config=LlamaConfig(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tokenizer),
            max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_image_tokens, vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = seeded_init(LlavaForConditionalGeneration, config, seed)
    return save_tiny(path, model, processor, tokenizer)
