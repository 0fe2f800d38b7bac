"""Built-in real dataset: scikit-learn's bundled handwritten digits as a VQA task.

1,797 real 8x8 grey-level scans (UCI optical digits) shipped inside
scikit-learn, turned into "What digit is this?" -> "seven" samples: pixel
values 0..16 scaled to 0..255, replicated to RGB and upscaled (nearest
neighbour, so no new values are invented) to the surrogate's input size. The
train/test split is deterministic for a given seed (stratified by digit).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .data import VQADataset, VQASample

__all__ = ["DIGIT_WORDS", "DIGITS_QUESTION", "TASKS", "load_digits_vqa"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_QUESTION = "What digit is this?"
#: question and answer function of each task on the digit images
TASKS = {
    "digit": (DIGITS_QUESTION, lambda d: DIGIT_WORDS[d]),
    "parity": ("Is the number in the image even or odd?", lambda d: "even" if d % 2 == 0 else "odd"),
    "numeral": ("Which number is shown? Answer with the numeral.", lambda d: str(d)),
}


def load_digits_vqa(image_size: int = 32, test_fraction: float = 1 / 3, seed: int = 0,
                    limit: int = 0, task: str = "digit") -> Tuple[VQADataset, VQADataset]:
    """Return ``(train, test)`` digits VQA datasets.

    Args:
        image_size: output side in pixels (a multiple of 8 keeps digit cells square).
        test_fraction: share of each digit class held out for the clean test split.
        seed: seed of the split permutation.
        limit: if > 0, keep at most this many samples in total (stratified), for quick runs.
        task: ``"digit"`` (name the digit), ``"parity"`` (even/odd) or ``"numeral"`` (the digit
            as "0".."9"): the last two are related but disjoint tasks (other question, other
            answer words), e.g. to pretrain a victim before it meets the protected data.
    """
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    question, answer_of = TASKS[task]
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    labels = bunch.target.astype(int)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    per_class_limit = limit // 10 if limit > 0 else None
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(len(idx))][:per_class_limit]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.extend(idx[:n_test].tolist())
        train_idx.extend(idx[n_test:].tolist())
    from PIL import Image

    def make(indices, split):
        samples = []
        for i in sorted(indices):
            big = np.asarray(Image.fromarray(images[i]).resize((image_size, image_size), Image.NEAREST))
            rgb = np.repeat(big[..., None], 3, axis=-1)
            samples.append(VQASample(f"digits-{i:04d}", rgb, question, answer_of(int(labels[i])),
                                     meta={"label": int(labels[i]), "split": split}))
        return VQADataset(samples, f"digits-{split}")

    return make(train_idx, "train"), make(test_idx, "test")
