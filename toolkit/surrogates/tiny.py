"""Tiny random-initialised models built offline, for tests, CPU benchmarks and the demo.

They use the same transformers classes as the real checkpoints and are saved
with ``save_pretrained`` (model + processor), so every code path that loads a
user's local checkpoint is exercised. The tokenizer is a byte-level BPE trained
here on a small English corpus shipped with the package, so word splitting and
re-tokenisation behave as on the real families' tokenizers. Nothing is
downloaded.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Union

import torch

__all__ = ["train_tiny_tokenizer", "build_tiny_llava", "LLAVA_CHAT_TEMPLATE"]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# A LLaVA-1.5 style conversation format ("USER: <image>\n... ASSISTANT: ...").
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _corpus_lines():
    text = resources.files("toolkit.surrogates").joinpath("corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def train_tiny_tokenizer(vocab_size: int = 600):
    """Train a byte-level BPE tokenizer on the bundled English corpus (offline, deterministic).

    Returns a transformers fast tokenizer with ``<s>`` (BOS, prepended),
    ``</s>`` (EOS), ``<pad>``, ``<unk>`` and the single ``<image>`` token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
    )


def build_tiny_llava(path: Union[str, os.PathLike], *, image_size: int = 32, patch_size: int = 8,
                     hidden_size: int = 128, num_layers: int = 2, vision_hidden_size: int = 64,
                     vision_layers: int = 2, seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a random-init tiny ``LlavaForConditionalGeneration`` and save it with its processor.

    The vision tower is a CLIP ViT, the language model a Llama, joined by the
    LLaVA MLP projector; the processor is a real ``LlavaProcessor`` (CLIP image
    processor at ``image_size``, the BPE tokenizer above, a LLaVA-1.5 chat
    template). ``(image_size // patch_size) ** 2`` image tokens per image.

    Returns the folder, which :func:`toolkit.surrogates.load_surrogate` opens.
    """
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    path = Path(path)
    tokenizer = train_tiny_tokenizer(vocab_size)
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
