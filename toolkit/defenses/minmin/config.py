"""Settings of the min-min loop (:class:`MinMinConfig`), shared by EMN, TUE, REM, MEM and MMGuard."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from ...pixel_transforms import check_eot
from ...registry import check_choice, check_range
from ..base import DefenseConfig

__all__ = ["MinMinConfig"]


@dataclass(frozen=True, kw_only=True)
class MinMinConfig(DefenseConfig):
    """Settings of the min-min loop (units: pixels in [0, 1]).

    Attributes:
        granularity: "sample" or "class".
        answer_clusters: 0 = one class per distinct answer; k > 0 = k answer clusters.
        rounds: maximum rounds; train_steps: the surrogate's training per round (Q), counted in train_unit:
        train_unit: "steps" (Q optimiser steps, each on the next batch of an endless shuffled stream) or
            "passes" (Q full shuffled passes over the protected data: every sample is trained on Q times).
        pgd_steps: PGD steps per batch per round (P); step_size: PGD sign step.
        pgd_fraction: share of samples whose perturbation is updated each round.
        batch_size / pgd_batch_size: training / PGD batch sizes.
        lr: surrogate learning rate (AdamW); train_mode: "full", "projector" or "lora"; lora_dropout.
        lora_rank: adapter rank (alpha = 2 x rank), one number for every surrogate, or one per surrogate in the
            order the defense receives them with ensembles expanded into their members (the paper: r8 for
            Qwen3-VL-4B, r16 for MiniCPM-V-4).
        init: "zeros" or "uniform" (U(-eps, eps)) start of delta.
        stop_accuracy, stop_clean_accuracy, stop_loss, eval_size: stopping rule (see EMN).
        restart_every, restart_init: periodic surrogate restarts ("same" weights or "random" init).
        eot: expectation over transformations for the PGD image step: a list of pixel transforms
            ``{name: ..., <params>}`` (see :mod:`toolkit.pixel_transforms`: ``identity``, ``jpeg``,
            ``gaussian_blur``, ``resize``, ``crop``); empty (the default) = plain PGD.
        eot_samples: transforms drawn per PGD step; the step follows the mean gradient over them (1).
        low_frequency: k > 0 keeps only the k x k lowest 2-D DCT frequencies of every delta (per channel, whole
            image) after every PGD step, before the L_inf / valid-pixel clipping; 0 (default) = off.
        store: where the perturbation lives (:class:`~toolkit.defenses.minmin.state.Perturbation`): "memory"
            (default; float32 clean images and deltas in memory, bit-for-bit the historical results) or "disk"
            (no copy of the clean pixels, made from the samples on demand, and per-sample deltas in a
            memory-mapped file, so memory does not grow with the dataset; see docs/SCALE.md).
        store_dir: folder for the disk store's file (default: the system's temporary folder); only with
            store="disk". The file is removed when the run ends.
        store_dtype: the disk store's value type: "float16" (default; each stored delta within eps / 2048 of
            the float32 value), "uint8" (quantised in units of eps / 127: within eps / 254) or "float32"
            (exact: the same release as the memory store).
    """

    granularity: str = "sample"
    answer_clusters: int = 0
    rounds: int = 30
    train_steps: int = 10
    train_unit: str = "steps"
    pgd_steps: int = 5
    step_size: float = 2 / 255
    pgd_fraction: float = 1.0
    batch_size: int = 64
    pgd_batch_size: int = 128
    lr: float = 2e-3
    train_mode: str = "full"
    lora_rank: Union[int, Tuple[int, ...]] = 8
    lora_dropout: float = 0.0
    init: str = "zeros"
    stop_accuracy: float = 0.99
    stop_clean_accuracy: float = 0.5
    stop_loss: float = 0.0
    eval_size: int = 256
    restart_every: int = 0
    restart_init: str = "same"
    eot: Tuple[Dict[str, Any], ...] = ()
    eot_samples: int = 1
    low_frequency: int = 0
    store: str = "memory"
    store_dir: Optional[str] = None
    store_dtype: str = "float16"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("granularity", self.granularity, {"sample", "class"})
        check_range("answer_clusters", self.answer_clusters, 0, 1 << 20)
        check_choice("train_mode", self.train_mode, {"full", "projector", "lora"})
        check_choice("init", self.init, {"zeros", "uniform"})
        check_range("rounds", self.rounds, 1, 100_000)
        check_range("train_steps", self.train_steps, 0, 100_000)
        check_range("pgd_steps", self.pgd_steps, 0, 100_000)
        check_range("step_size", self.step_size, 0, 1, low_open=True)
        check_range("pgd_fraction", self.pgd_fraction, 0, 1, low_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("pgd_batch_size", self.pgd_batch_size, 1, 1 << 20)
        check_range("lr", self.lr, 0, 1, low_open=True)
        check_choice("train_unit", self.train_unit, {"steps", "passes"})
        ranks = self.lora_rank if isinstance(self.lora_rank, (list, tuple)) else (self.lora_rank,)
        if not ranks:
            raise ValueError("lora_rank must be an integer or a non-empty list of integers (one per surrogate)")
        for r in ranks:
            if not isinstance(r, int) or isinstance(r, bool):
                raise ValueError(f"lora_rank entries must be integers, got {r!r}")
            check_range("lora_rank", r, 1, 4096)
        if isinstance(self.lora_rank, list):
            object.__setattr__(self, "lora_rank", tuple(self.lora_rank))
        check_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        check_range("stop_accuracy", self.stop_accuracy, 0, 1)
        check_range("stop_clean_accuracy", self.stop_clean_accuracy, 0, 1)
        check_range("stop_loss", self.stop_loss, 0, 1e9)
        check_range("eval_size", self.eval_size, 1, 1 << 30)
        check_range("restart_every", self.restart_every, 0, 1 << 30)
        check_choice("restart_init", self.restart_init, {"same", "random"})
        object.__setattr__(self, "eot", check_eot("eot", self.eot))
        if not isinstance(self.eot_samples, int) or isinstance(self.eot_samples, bool):
            raise ValueError(f"eot_samples must be an integer, got {self.eot_samples!r}")
        check_range("eot_samples", self.eot_samples, 1, 1024)
        if not isinstance(self.low_frequency, int) or isinstance(self.low_frequency, bool):
            raise ValueError(f"low_frequency must be an integer (DCT coefficients kept per side), "
                             f"got {self.low_frequency!r}")
        check_range("low_frequency", self.low_frequency, 0, 1 << 16)
        check_choice("store", self.store, {"memory", "disk"})
        check_choice("store_dtype", self.store_dtype, {"float16", "uint8", "float32"})
        if self.store_dir is not None:
            if not isinstance(self.store_dir, (str, os.PathLike)) or not str(self.store_dir):
                raise ValueError(f"store_dir must be a folder path or None, got {self.store_dir!r}")
            if self.store != "disk":
                raise ValueError("store_dir is only used with store='disk' (the memory store writes no file)")
            object.__setattr__(self, "store_dir", str(self.store_dir))
        if self.restart_init == "random" and self.train_mode != "full":
            raise ValueError("restart_init='random' needs train_mode='full' (a from-scratch surrogate)")

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON view; the store settings appear only with ``store="disk"`` (and ``store_dir`` only when
        set), so the default store leaves manifests, checkpoint fingerprints and cache keys as they were."""
        out = super().to_dict()
        if self.store == "memory":
            for key in ("store", "store_dir", "store_dtype"):
                out.pop(key, None)
        elif self.store_dir is None:
            out.pop("store_dir", None)
        return out

    def lora_ranks(self, members: int) -> Tuple[int, ...]:
        """One adapter rank per surrogate member (``members`` of them, ensembles expanded)."""
        if isinstance(self.lora_rank, int):
            return (self.lora_rank,) * members
        if len(self.lora_rank) != members:
            raise ValueError(f"lora_rank lists {len(self.lora_rank)} ranks for {members} surrogate members "
                             f"(one per surrogate, ensembles expanded, in order)")
        return tuple(self.lora_rank)
