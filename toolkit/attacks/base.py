"""Countermeasure base classes (the attacker's side) and the ``COUNTERMEASURES`` registry.

Every countermeasure is a :class:`Countermeasure` of one of two kinds:

- a data-side :class:`Transform` maps a (protected) training set to a new
  dataset; it is applied to the TRAINING split only (the pipeline never hands it
  the clean test split). Transforms compose: ``COUNTERMEASURES.create("jpeg+punctuation")``
  is a :class:`Chain` applying them left to right;
- a :class:`TrainingCountermeasure` rewrites every batch of the unauthorized
  fine-tuning (pass it to :class:`~toolkit.attacks.FineTune` as ``countermeasure=``).

A countermeasure that must be *fitted* on the attacker's own clean data
(``needs_fit = True``) declares the matrix-spec ``fit`` keys it reads
(``fit_keys``), validates them (:meth:`Countermeasure.check_fit`), says what its
fitted result depends on (:meth:`Countermeasure.fit_identity`, for cache keys)
and fits itself from one :class:`~toolkit.attacks.fitting.FitContext`
(:meth:`Countermeasure.fit_from`). The matrix runner knows no countermeasure by
name: adding a fitted one is one new file.
"""
from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Dict, FrozenSet, List, Mapping, Sequence

import numpy as np
import torch

from ..data import VQADataset, VQASample
from ..registry import Config, Registry, make_config

if TYPE_CHECKING:  # pragma: no cover
    from .fitting import FitContext

__all__ = ["Countermeasure", "Transform", "TrainingCountermeasure", "Chain", "COUNTERMEASURES"]


class _CountermeasureRegistry(Registry):
    """Registry whose ``create`` also builds chains from ``"a+b+c"`` names.

    For a chain, keyword arguments are per-member config dicts keyed by member
    name: ``create("jpeg+resize", jpeg={"quality": 30}, resize={"scale": 0.5})``.
    """

    def create(self, name: str, **config: Any):  # type: ignore[override]
        if "+" not in name:
            return super().create(name, **config)
        parts = [p.strip() for p in name.split("+")]
        unknown = sorted(set(config) - set(parts))
        if unknown:
            raise TypeError(f"chain {name!r}: config keys must be member names {parts}, got {unknown}")
        for key, value in config.items():
            if not isinstance(value, dict):
                raise TypeError(f"chain {name!r}: config for {key!r} must be a dict, got {type(value).__name__}")
        members = [super(_CountermeasureRegistry, self).create(p, **config.get(p, {})) for p in parts]
        training = [m.name for m in members if isinstance(m, TrainingCountermeasure)]
        if training:
            raise TypeError(f"chain {name!r}: training-side countermeasures {training} cannot be chained")
        return Chain(members)


COUNTERMEASURES: Registry = _CountermeasureRegistry("countermeasure")


class Countermeasure(ABC):
    """Base of every countermeasure: a frozen ``Config`` built from keyword arguments, and the fitting hooks.

    Subclass :class:`Transform` (data-side) or :class:`TrainingCountermeasure`
    (training-side), not this class. A fitted countermeasure sets
    ``needs_fit = True``, lists its spec ``fit`` keys in ``fit_keys`` and
    overrides :meth:`fit_from` (and :meth:`check_fit` / :meth:`fit_identity`
    when it reads any ``fit`` key or model).
    """

    Config: ClassVar[type] = Config
    name: ClassVar[str]
    #: True when the countermeasure must be fitted (on the attacker's own data) before use
    needs_fit: ClassVar[bool] = False
    #: the matrix-spec ``fit`` keys :meth:`fit_from` reads
    fit_keys: ClassVar[FrozenSet[str]] = frozenset()

    def __init__(self, **config: Any) -> None:
        self.config = make_config(self.Config, f"countermeasure {getattr(self, 'name', type(self).__name__)!r}",
                                  config)

    def members(self) -> List["Countermeasure"]:
        """The countermeasures this one applies, in order (itself; a :class:`Chain` lists its members)."""
        return [self]

    @classmethod
    def check_fit(cls, fit: Mapping[str, Any], models: Collection[str], defenses: Collection[str]) -> None:
        """Validate a spec's ``fit`` entries against the spec's model names and defense labels.

        Raise ``ValueError`` whose message starts with the offending key (``"scorer: ..."``).
        Unknown keys are rejected by the caller from ``fit_keys``.
        """

    def fit_identity(self, ctx: "FitContext") -> Dict[str, Any]:
        """What the fitted result depends on beyond the protected set, the ``fit`` entries and the attacker's
        clean data (e.g. the identity of a scoring model); merged into the transform's cache key."""
        return {}

    def fit_from(self, ctx: "FitContext") -> Dict[str, Any]:
        """Fit on the attacker's side from ``ctx``; returns what to report (e.g. a fitted threshold)."""
        raise NotImplementedError(f"{self.name} needs no fitting" if not self.needs_fit
                                  else f"{type(self).__name__} sets needs_fit but does not implement fit_from")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class Transform(Countermeasure):
    """A data-side countermeasure: dataset -> dataset, sample by sample.

    Subclasses declare a frozen ``Config`` dataclass and override
    :meth:`transform_image` (uint8 (H, W, 3) -> uint8 (H, W, 3)) and/or
    :meth:`transform_question`. A config with a ``seed`` field gets a seeded
    numpy ``Generator`` per call, shared by the samples in order. Inputs are
    never mutated.
    """

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the transformed image (default: unchanged)."""
        return image

    def transform_question(self, question: str) -> str:
        """Return the transformed question text (default: unchanged)."""
        return question

    def __call__(self, dataset: VQADataset) -> VQADataset:
        """Apply to every sample; returns a new dataset named ``<name>+<transform>``."""
        rng = np.random.default_rng(getattr(self.config, "seed", 0))
        out = []
        for s in dataset:
            image = self.transform_image(s.image, rng)
            if image.shape != s.image.shape or image.dtype != np.uint8:
                raise RuntimeError(f"{self.name}: must return uint8 {s.image.shape}, got {image.dtype} {image.shape}")
            out.append(s.with_(image=image, question=self.transform_question(s.question)))
        return dataset.replace_samples(out, f"{dataset.name}+{self.name}")


class TrainingCountermeasure(Countermeasure):
    """A training-side countermeasure: ``batch(victim, pixels, samples, generator) -> pixels``.

    ``pixels`` is a float (B, 3, H, W) batch in [0, 1]; the returned batch is
    what the training step uses. Called with the victim in training mode; an
    implementation that needs input gradients freezes the parameters itself.
    ``stats`` collects what it measured during the run.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.stats: Dict[str, float] = {}

    def batch(self, victim, pixels: torch.Tensor, samples: Sequence[VQASample],
              generator: torch.Generator) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, dataset):
        raise TypeError(f"{self.name} is a training-side countermeasure: pass it to FineTune(countermeasure=...)")


class Chain(Transform):
    """Data-side countermeasures applied left to right; itself a countermeasure."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        if not transforms:
            raise ValueError("a chain needs at least one countermeasure")
        self.transforms = list(transforms)
        self.name = "+".join(t.name for t in self.transforms)  # type: ignore[misc]
        self.config = Config()

    def members(self) -> List[Countermeasure]:
        return list(self.transforms)

    def __call__(self, dataset: VQADataset) -> VQADataset:
        for t in self.transforms:
            dataset = t(dataset)
        return dataset

    def describe(self) -> Dict[str, Any]:
        """Member names and configs (for result rows)."""
        return {t.name: t.config.to_dict() for t in self.transforms}
