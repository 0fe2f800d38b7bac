"""Tiny Idefics3 and SmolVLM models (SigLIP-style ViT + pixel-shuffle connector + Llama), 16 px tiles."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .common import register_tiny, seeded_init, train_tiny_tokenizer, save_tiny

__all__ = ["build_tiny_idefics3", "build_tiny_smolvlm", "IDEFICS3_CHAT_TEMPLATE", "SMOLVLM_CHAT_TEMPLATE"]

# "User:<image>question<end_of_utterance>\nAssistant:" (Idefics3 style; BOS comes from the tokenizer)
IDEFICS3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# SmolVLM style: the conversation opens with <|im_start|>, roles capitalised, ": " before text-first turns
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def _tokenizer(vocab_size: int, smol: bool):
    named = {"image_token": "<image>"}
    if smol:  # SmolVLMProcessor reads these names from the tokenizer
        named.update(fake_image_token="<fake_token_around_image>", global_image_token="<global-img>",
                     end_of_utterance_token="<end_of_utterance>")
    extra = ["<fake_token_around_image>", "<global-img>", *_ROW_COL, "<end_of_utterance>"]
    if smol:
        extra += ["<|im_start|>", "<video>"]
    return train_tiny_tokenizer(vocab_size, named_tokens=named, extra_special=extra, eos="<end_of_utterance>")


def _build(path, *, smol: bool, tile: int, longest_edge: int, patch_size: int, scale_factor: int, hidden_size: int,
           num_layers: int, vision_hidden_size: int, vision_layers: int, seed: int, vocab_size: int) -> Path:
    import transformers as tf
    from transformers import LlamaConfig

    prefix = "SmolVLM" if smol else "Idefics3"
    path = Path(path)
    tokenizer = _tokenizer(vocab_size, smol)
    image_processor = getattr(tf, f"{prefix}ImageProcessor")(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, do_image_splitting=True)
    per_tile = (tile // patch_size // scale_factor) ** 2
    if smol:
        video_processor = tf.SmolVLMVideoProcessor(size={"longest_edge": longest_edge},
                                                   max_image_size={"longest_edge": tile})
        processor = tf.SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=video_processor, image_seq_len=per_tile,
                                        chat_template=SMOLVLM_CHAT_TEMPLATE)
    else:
        processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                         image_seq_len=per_tile, chat_template=IDEFICS3_CHAT_TEMPLATE)
    vision = getattr(tf, f"{prefix}VisionConfig")(
        hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=tile, patch_size=patch_size)
    text = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    config = getattr(tf, f"{prefix}Config")(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor, pad_token_id=tokenizer.pad_token_id)
    model = seeded_init(getattr(tf, f"{prefix}ForConditionalGeneration"), config, seed)
    return save_tiny(path, model, processor, tokenizer)


@register_tiny("idefics3")
def build_tiny_idefics3(path: Union[str, os.PathLike], *, tile: int = 16, longest_edge: int = 48, patch_size: int = 4,
                        scale_factor: int = 2, hidden_size: int = 64, num_layers: int = 2,
                        vision_hidden_size: int = 64, vision_layers: int = 1, seed: int = 0,
                        vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``Idefics3ForConditionalGeneration`` and save it with its processor.

    The longest edge is resized to ``longest_edge`` px and split into ``tile``
    px tiles (a 32x32 image: 3x3 tiles + global image; 30x45: 2x3 + global),
    each (tile / patch_size / scale_factor)^2 = 4 ``<image>`` tokens. The
    processor is a real ``Idefics3Processor`` (Lanczos resampling as the real
    one, the BPE tokenizer with ``<fake_token_around_image>``, ``<global-img>``,
    ``<row_i_col_j>``, ``<end_of_utterance>`` as end of sequence).

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    return _build(path, smol=False, tile=tile, longest_edge=longest_edge, patch_size=patch_size,
                  scale_factor=scale_factor, hidden_size=hidden_size, num_layers=num_layers,
                  vision_hidden_size=vision_hidden_size, vision_layers=vision_layers, seed=seed, vocab_size=vocab_size)


@register_tiny("smolvlm")
def build_tiny_smolvlm(path: Union[str, os.PathLike], *, tile: int = 16, longest_edge: int = 48, patch_size: int = 4,
                       scale_factor: int = 2, hidden_size: int = 64, num_layers: int = 2,
                       vision_hidden_size: int = 64, vision_layers: int = 1, seed: int = 0,
                       vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``SmolVLMForConditionalGeneration`` and save it with its processor.

    Same layout as :func:`build_tiny_idefics3` with the SmolVLM classes (image,
    video and text processors; the real ``SmolVLMProcessor`` needs the
    ``num2words`` package).

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    return _build(path, smol=True, tile=tile, longest_edge=longest_edge, patch_size=patch_size,
                  scale_factor=scale_factor, hidden_size=hidden_size, num_layers=num_layers,
                  vision_hidden_size=vision_hidden_size, vision_layers=vision_layers, seed=seed, vocab_size=vocab_size)
