"""Pieces shared by the tiny builders: the offline BPE tokenizer and the builder registry."""
from __future__ import annotations

from importlib import resources
from typing import Callable, Dict, Optional, Sequence

import torch

__all__ = ["TINY_BUILDERS", "register_tiny", "train_tiny_tokenizer", "LLAVA_CHAT_TEMPLATE", "seeded_init",
           "SPECIAL_TOKENS", "save_tiny"]

#: family name -> builder(path, *, seed=0, **kw) -> Path
TINY_BUILDERS: Dict[str, Callable] = {}


def register_tiny(family: str) -> Callable[[Callable], Callable]:
    """Decorator registering a tiny builder under ``family``."""
    def deco(fn: Callable) -> Callable:
        if family in TINY_BUILDERS:
            raise KeyError(f"tiny builder {family!r} registered twice")
        TINY_BUILDERS[family] = fn
        return fn
    return deco


def seeded_init(cls, config, seed: int):
    """Instantiate ``cls(config)`` with weights drawn under ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return cls(config)


def save_tiny(path, model, processor, tokenizer, clear_bos: bool = False):
    """Set the generation pad/eos ids from ``tokenizer`` and save model + processor at ``path``.

    ``clear_bos``: drop the generation config's BOS id (families whose prompts carry no BOS).
    Returns the folder as a ``Path``.
    """
    from pathlib import Path

    path = Path(path)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if clear_bos:
        model.generation_config.bos_token_id = None
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


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


def train_tiny_tokenizer(vocab_size: int = 600, *, extra_special: Sequence[str] = (),
                         named_tokens: Optional[Dict[str, str]] = None, bos: str = "<s>", eos: str = "</s>",
                         pad: str = "<pad>", add_bos: bool = True, extra_corpus: Sequence[str] = ()):
    """Train a byte-level BPE tokenizer on the bundled English corpus (offline, deterministic).

    Args:
        vocab_size: total vocabulary size, special tokens included.
        extra_special: further special tokens a family's processor needs
            (e.g. ``<|vision_start|>``); each becomes one unsplittable token.
        named_tokens: attribute name -> token, set as ``extra_special_tokens``
            (default ``{"image_token": "<image>"}``), so processors find
            ``tokenizer.image_token`` and friends.
        bos, eos, pad: names of those tokens (created if missing).
        add_bos: prepend BOS to every encoded text.
        extra_corpus: further training lines after the bundled corpus (e.g. a task's
            questions and answers, so a pretrained model zoo has its words as single tokens).

    Returns a transformers fast tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    named = {"image_token": "<image>"} if named_tokens is None else dict(named_tokens)
    specials = list(dict.fromkeys(["<unk>", bos, eos, pad, *SPECIAL_TOKENS[4:], *named.values(), *extra_special]))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines() + list(extra_corpus), trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>",
        pad_token=pad, extra_special_tokens=named,
    )
