"""The one context a fitted countermeasure fits itself from (see :class:`~toolkit.attacks.base.Countermeasure`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..data import VQADataset

__all__ = ["FitContext", "DefenseRef"]


@dataclass(frozen=True)
class DefenseRef:
    """A defense row as an attacker may imitate it: registry ``name``, ``config``, surrogate model names,
    ensemble ``weights`` (None: the surrogates are used one by one); ``label`` is the row's label."""

    label: str
    name: Optional[str]
    config: Mapping[str, Any] = field(default_factory=dict)
    surrogates: Sequence[str] = ()
    weights: Optional[Sequence[float]] = None


@dataclass
class FitContext:
    """Everything an attacker-side fit may use, handed over by whoever runs the countermeasure.

    Threat model: the attacker owns ``attacker_clean`` (clean samples disjoint from
    the owner's release and from the test split), sees the owner's ``released``
    training set, knows the public defenses (it may re-run one on its own data) and
    may load any model named in the experiment. ``owner_train`` (the owner's
    clean originals) is for *reporting* only (e.g. a detector's AUROC), never for fitting.

    Attributes:
        fit: the spec's ``fit`` entries of this countermeasure (``scorer``, ``defense``, ...).
        seed: the experiment seed (a re-run defense uses ``seed + 1000``).
        attacker_clean: the attacker's clean data (None while only computing a cache key).
        released: the owner's released (protected) training set.
        owner_train: the owner's clean originals (reporting only).
        row: the defense row being attacked.
        load_model: model name -> a fresh surrogate.
        model_identity: model name -> a JSON-able content identity (for cache keys).
        defense_by_label: defense label -> :class:`DefenseRef` (``"same"`` is the row's own).
        make_defense: (:class:`DefenseRef`, seed) -> a new defense instance of that row's class and config.
        ensemble: (models, weights) -> one surrogate averaging their losses.
    """

    fit: Mapping[str, Any]
    seed: int
    row: DefenseRef
    load_model: Callable[[str], Any]
    model_identity: Callable[[str], Dict[str, Any]]
    defense_by_label: Callable[[str], DefenseRef]
    make_defense: Callable[[DefenseRef, int], Any]
    ensemble: Callable[[List[Any], Sequence[float]], Any]
    attacker_clean: Optional[VQADataset] = None
    released: Optional[VQADataset] = None
    owner_train: Optional[VQADataset] = None

    def imitated_defense(self) -> DefenseRef:
        """The defense named by ``fit.defense`` (default ``same``: the row's own)."""
        label = self.fit.get("defense", "same")
        return self.row if label == "same" else self.defense_by_label(label)

    def clean_data(self) -> VQADataset:
        """The attacker's clean data; ``RuntimeError`` when the context was built without it."""
        if self.attacker_clean is None:
            raise RuntimeError("this fit needs the attacker's clean data (data.attacker_clean in a matrix spec)")
        return self.attacker_clean
