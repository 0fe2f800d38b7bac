"""The stages of a matrix cell, each cached by content: data, protect, transform (with attacker-side fitting),
pretrain, zero-shot and fine-tune + evaluate."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..attacks import COUNTERMEASURES, FineTune, TrainingCountermeasure
from ..attacks.fitting import DefenseRef, FitContext
from ..data import VQADataset, load_dataset
from ..datasets import DATASETS
from ..defenses import DEFENSES
from ..defenses.base import Protection
from ..metrics import evaluate_answers, trigger_removal
from ..release import write_release
from ..surrogates import Ensemble
from .cache import StageCache, content_hash
from .code import code_identity
from .models import ModelStore
from .spec import CountermeasureSpec, DefenseSpec, MatrixError, MatrixSpec, data_source, dataset_config

__all__ = ["Stages", "peak_memory_mib"]


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (MiB; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def _ref(d: DefenseSpec) -> DefenseRef:
    return DefenseRef(d.label, d.name, d.config, d.surrogates, d.weights)


class Stages:
    """Computes (or finds in ``cache``) every stage output of a spec's cells.

    Args:
        spec: the matrix spec.
        out: the run folder.
        progress: progress bars.
        device, dtype: where and how models run.
        cache: the stage cache folder (default ``out/cache``); keys are content hashes, so
            specs may share one.
    """

    def __init__(self, spec: MatrixSpec, out: Path, progress: bool = False, device: str = "cpu",
                 dtype: str = "float32", cache: Optional[Path] = None) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.models = ModelStore(spec, out, device, dtype, progress)
        self.cache = StageCache(cache if cache is not None else out / "cache")
        #: stage -> outputs computed (not found in the cache) by this process
        self.counters = {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}

    # ----------------------------------------------------------------- data
    def data(self, seed: int) -> Tuple[VQADataset, VQADataset, Optional[VQADataset]]:
        """(owner's training split, test split, attacker's clean share or None) for ``seed``.

        ``data.source`` is a registered dataset (``toolkit.datasets.DATASETS``: ``digits``,
        ``scenes``, ...) built with the other ``data`` keys as its config (``seed``: the matrix
        seed unless ``data.seed`` is given), or ``files`` (``data.train`` / ``data.test``).
        With ``data.attacker_clean: N``, N training samples (seeded choice) are the
        attacker's own clean data, disjoint from what the owner protects.
        """
        d = self.spec.data
        source = data_source(d)
        if source == "files":
            train, test = load_dataset(d["train"]), load_dataset(d["test"])
        else:
            train, test = DATASETS.create(source, **dataset_config(d, seed)).build()
        n_att = int(d.get("attacker_clean", 0))
        if not n_att:
            return train, test, None
        if n_att >= len(train):
            raise MatrixError(f"data.attacker_clean={n_att} leaves no training data (the split has {len(train)})")
        order = np.random.default_rng(seed).permutation(len(train))
        owner = train.replace_samples([train[i] for i in sorted(order[n_att:])], f"{train.name}-owner")
        return owner, test, train.replace_samples([train[i] for i in sorted(order[:n_att])], "attacker-clean")

    # ----------------------------------------------------------------- protect
    def protect(self, dspec: DefenseSpec, train: VQADataset, seed: int) -> Tuple[str, Dict[str, Any]]:
        """Protect ``train`` with the row's defense; returns (cache key, meta); the release is at
        ``cache.path("protect", key) / "release"``."""
        key = content_hash("protect", dspec.name, dspec.config, seed,
                           [self.models.identity(s) for s in dspec.surrogates], dspec.weights, self.spec.data,
                           code_identity(DEFENSES.get(dspec.name)))
        if not self.cache.has("protect", key):
            def build(tmp: Path) -> Dict[str, Any]:
                defense = DEFENSES.create(dspec.name, **{**dspec.config, "seed": seed})
                models = [self.models.load(s) for s in dspec.surrogates]
                if dspec.weights is not None:
                    models = [Ensemble(models, dspec.weights)]
                t0 = time.perf_counter()
                protection = defense.protect(train, models, progress=self.progress,
                                             checkpoint=self.cache.root / "checkpoints" / f"{key}.pt")
                seconds = time.perf_counter() - t0
                write_release(protection, tmp / "release")
                self.counters["protect"] += 1
                return {"seconds": seconds, "peak_mib": peak_memory_mib(), "rounds": protection.info.get("rounds")}
            self.cache.commit("protect", key, build)
        return key, self.cache.meta("protect", key)

    # ----------------------------------------------------------------- transform
    def fit_context(self, cm: CountermeasureSpec, dspec: DefenseSpec, seed: int, attacker_clean=None,
                    released=None, owner_train=None) -> FitContext:
        """The :class:`FitContext` a fitted countermeasure of column ``cm`` gets in row ``dspec``."""
        by_label = {d.label: d for d in self.spec.defenses}

        def make_defense(ref: DefenseRef, defense_seed: int):
            return DEFENSES.create(ref.name, **{**ref.config, "seed": defense_seed})

        return FitContext(fit=cm.fit, seed=seed, row=_ref(dspec), load_model=self.models.load,
                          model_identity=self.models.identity, defense_by_label=lambda label: _ref(by_label[label]),
                          make_defense=make_defense, ensemble=Ensemble, attacker_clean=attacker_clean,
                          released=released, owner_train=owner_train)

    def fit_identity(self, cm: CountermeasureSpec, dspec: DefenseSpec, seed: int) -> Dict[str, Any]:
        """What a fitted countermeasure's result depends on beyond the protected set (for the cache key)."""
        if not cm.fitted:
            return {}
        ident: Dict[str, Any] = {"fit": cm.fit, "attacker_clean": self.spec.data.get("attacker_clean")}
        ctx = self.fit_context(cm, dspec, seed)
        for member in COUNTERMEASURES.create(cm.name, **cm.config).members():
            if member.needs_fit:
                ident.update(member.fit_identity(ctx))
        return ident

    @staticmethod
    def code_identity(cm: CountermeasureSpec) -> list:
        """Code identities of a column's countermeasure: the registered class and, for a chain, each member's."""
        made = COUNTERMEASURES.create(cm.name, **cm.config)
        return sorted({code_identity(type(made))} | {code_identity(type(m)) for m in made.members()})

    def transform(self, source_key: str, released: VQADataset, cm: CountermeasureSpec, seed: int,
                  dspec: DefenseSpec, owner_train: VQADataset, attacker_clean) -> Tuple[str, Dict[str, Any]]:
        """Apply the column's countermeasure to a release (fitting its members on the attacker's side first);
        returns (cache key, meta). A training-side countermeasure only records that it is one."""
        key = content_hash("transform", source_key, cm.name, cm.config, seed, self.fit_identity(cm, dspec, seed),
                           self.code_identity(cm))
        if not self.cache.has("transform", key):
            def build(tmp: Path) -> Dict[str, Any]:
                t0 = time.perf_counter()
                transform = COUNTERMEASURES.create(cm.name, **cm.config)
                if isinstance(transform, TrainingCountermeasure):
                    return {"seconds": 0.0, "training_side": True}
                info: Dict[str, Any] = {}
                ctx = self.fit_context(cm, dspec, seed, attacker_clean, released, owner_train)
                for member in transform.members():
                    if member.needs_fit:
                        info.update(member.fit_from(ctx))
                data = transform(released)
                info.update(trigger_removal(released, data))
                # a transform that changed nothing (a trigger filter on trigger-free questions) trains
                # exactly what its source trains: the fine-tune stage then reuses the source's cell
                info["unchanged"] = len(data) == len(released) and all(
                    a.id == b.id and a.question == b.question and a.answer == b.answer
                    and np.array_equal(a.image, b.image) for a, b in zip(released, data))
                seconds = time.perf_counter() - t0
                write_release(Protection(dataset=data, source=released, defense=cm.name, config=cm.config),
                              tmp / "release")
                self.counters["transform"] += 1
                return {"seconds": seconds, "training_side": False, **info}
            self.cache.commit("transform", key, build)
        return key, self.cache.meta("transform", key)

    # ----------------------------------------------------------------- victims
    def pretrained_victim(self, victim: str, seed: int, attacker_clean) -> Path:
        """The victim's folder, after ``finetune.pretrain`` when the recipe has one (cached per seed).

        Pretraining = a full fine-tune (its own ``FineTune`` fields) on a disjoint task: the
        attacker's clean images with another digits ``task`` (e.g. ``numeral``), or a ``data`` file.
        It gives a from-scratch tiny victim the visual priors a real LVLM arrives with.
        """
        pre = self.spec.finetune.get("pretrain")
        if not pre:
            return self.models.folder(victim)
        key = content_hash("pretrain", self.models.identity(victim), pre, self.spec.data, seed, code_identity(FineTune))
        if not self.cache.has("pretrain", key):
            def build(tmp: Path) -> Dict[str, Any]:
                if "task" in pre:
                    config = {**dataset_config(self.spec.data, seed), "task": pre["task"]}
                    relabelled = {s.id: s for s in DATASETS.create("digits", **config).build()[0]}
                    data = attacker_clean.replace_samples([relabelled[s.id] for s in attacker_clean],
                                                          f"attacker-{pre['task']}")
                else:
                    data = load_dataset(pre["data"])
                model = self.models.load(victim)
                config = {k: v for k, v in pre.items() if k not in ("task", "data")}
                result = FineTune(**{**config, "seed": seed})(model, data, progress=self.progress)
                model.save(tmp / "model")
                self.counters["pretrain"] += 1
                return {"seconds": result.seconds, "samples": len(data)}
            self.cache.commit("pretrain", key, build)
        return self.cache.path("pretrain", key) / "model"

    def zero_shot(self, victim: str, test: VQADataset, seed: int, attacker_clean=None) -> Dict[str, Any]:
        """Clean-test accuracy of the victim as the attacker gets it (after ``finetune.pretrain``), not fine-tuned."""
        key = content_hash("zero_shot", self.models.identity(victim), self.spec.finetune.get("pretrain"),
                           self.spec.data, seed)
        if not self.cache.has("zero_shot", key):
            def build(tmp: Path) -> Dict[str, Any]:
                model = self.models.load(victim, self.pretrained_victim(victim, seed, attacker_clean))
                t0 = time.perf_counter()
                acc, preds = evaluate_answers(model, test)
                (tmp / "predictions.json").write_text(json.dumps(preds))
                return {"accuracy": acc, "eval_seconds": time.perf_counter() - t0, "peak_mib": peak_memory_mib()}
            self.cache.commit("zero_shot", key, build)
        return {"key": key, **self.cache.meta("zero_shot", key)}

    def finetune(self, data_key: str, training_set: VQADataset, victim: str, cm: Optional[CountermeasureSpec],
                 test: VQADataset, seed: int, attacker_clean=None) -> Dict[str, Any]:
        """Fine-tune the victim on ``training_set`` (with a training-side countermeasure ``cm`` if given) and
        score it on the clean ``test`` split."""
        recipe = {k: v for k, v in self.spec.finetune.items() if k != "pretrain"}
        key = content_hash("finetune", data_key, self.models.identity(victim), self.spec.finetune,
                           cm.name if cm else None, cm.config if cm else None, seed, code_identity(FineTune))
        if not self.cache.has("finetune", key):
            def build(tmp: Path) -> Dict[str, Any]:
                model = self.models.load(victim, self.pretrained_victim(victim, seed, attacker_clean))
                training_cm = COUNTERMEASURES.create(cm.name, **cm.config) if cm else None
                result = FineTune(**{**recipe, "seed": seed})(model, training_set, progress=self.progress,
                                                              countermeasure=training_cm)
                t0 = time.perf_counter()
                acc, preds = evaluate_answers(model, test)
                (tmp / "predictions.json").write_text(json.dumps(preds))
                self.counters["finetune"] += 1
                return {"accuracy": acc, "finetune_seconds": result.seconds, "train_losses": result.epoch_losses,
                        "eval_seconds": time.perf_counter() - t0, "peak_mib": peak_memory_mib()}
            self.cache.commit("finetune", key, build)
        return {"key": key, **self.cache.meta("finetune", key)}
