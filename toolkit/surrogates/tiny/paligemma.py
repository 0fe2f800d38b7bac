"""Tiny PaliGemma style model (SigLIP ViT + linear projector + Gemma, prefix-LM)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_paligemma"]


@register_tiny("paligemma")
def build_tiny_paligemma(path: Union[str, os.PathLike], *, image_size: int = 32, patch_size: int = 8,
                         hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 32,
                         vision_layers: int = 1, seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``PaliGemmaForConditionalGeneration`` and save it with its processor.

    SigLIP ViT at ``image_size`` px with ``patch_size`` px patches
    (``(image_size // patch_size) ** 2`` image tokens, 16 by default), a linear
    projector and a Gemma text model; the processor is a real
    ``PaliGemmaProcessor`` (SigLIP image processor, BPE tokenizer with Gemma's
    ``<bos>`` / ``<eos>`` / ``<pad>`` and ``<image>``; the processor adds its
    1024 ``<locNNNN>`` and 128 ``<segNNN>`` tokens, which the model's vocabulary
    covers). No chat template, as for the real checkpoints.
    """
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    path = Path(path)
    tokenizer = train_tiny_tokenizer(vocab_size, named_tokens={"image_token": "<image>"},
                                     bos="<bos>", eos="<eos>", pad="<pad>")
    n_tokens = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                           image_seq_length=n_tokens)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds loc/seg tokens
    vocab = len(tokenizer)
    head_dim = 16
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
            patch_size=patch_size, vision_use_head=False),
        text_config=GemmaConfig(
            vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=1, head_dim=head_dim,
            max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=vocab, projection_dim=hidden_size, hidden_size=hidden_size,
    )
    model = seeded_init(PaliGemmaForConditionalGeneration, config, seed)
    return save_tiny(path, model, processor, tokenizer)
