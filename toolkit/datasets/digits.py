"""The built-in digits task (:func:`toolkit.digits.load_digits_vqa`) as a registry entry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from ..data import VQADataset
from ..digits import TASKS, load_digits_vqa
from ..registry import Config, check_choice, check_range, make_config

__all__ = ["Digits"]


class Digits:
    """scikit-learn's 1,797 handwritten digit scans as VQA (digit name, parity or numeral).

    Config (keyword-only): ``image_size`` (pixels, >= 8), ``seed`` (split permutation),
    ``limit`` (at most this many samples in all, 0 = all), ``task`` (digit|parity|numeral),
    ``test_fraction`` (share of each class held out, in (0, 1)).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        """The arguments of :func:`~toolkit.digits.load_digits_vqa`, validated on creation."""

        image_size: int = 32
        seed: int = 0
        limit: int = 0
        task: str = "digit"
        test_fraction: float = 1 / 3

        def __post_init__(self) -> None:
            check_range("image_size", self.image_size, 8, 4096)
            check_range("seed", self.seed, 0, 2 ** 63 - 1)
            check_range("limit", self.limit, 0, 10_000_000)
            check_choice("task", self.task, set(TASKS))
            check_range("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, "digits", config)

    def build(self) -> Tuple[VQADataset, VQADataset]:
        """``(train, test)`` exactly as ``load_digits_vqa(**config)`` returns them."""
        c = self.config
        return load_digits_vqa(image_size=int(c.image_size), test_fraction=c.test_fraction, seed=int(c.seed),
                               limit=int(c.limit), task=c.task)
