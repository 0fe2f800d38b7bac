"""Defense x countermeasure x victim matrices: spec, cached resumable runner, threat-model labels.

A :class:`MatrixSpec` (YAML or a Python dict) names the data, the models, the
defenses (each with its surrogates), the countermeasures (chains allowed), the
victims, the fine-tuning recipe and the seeds. :func:`run_matrix` walks the
dependency graph with a content-addressed cache under ``OUT/cache``:

- protect once per (defense config, surrogates, data, seed) -> a release folder;
- transform once per (protected set, countermeasure, seed) -> a release folder
  (countermeasures that must be fitted, ``trigger_filter``, ``mix_clean`` and
  ``lightshed``, are fitted there on the attacker's own clean share of the
  training data, ``data.attacker_clean`` samples split off before protection);
- fine-tune + evaluate once per (training set, victim, recipe, seed) -> a JSON result.

Every cached item is written atomically, so a killed run resumes where it
stopped and nothing finished is recomputed. A failing stage becomes an error
row carrying its message; the rest of the matrix continues. The clean control
(no defense) and the ``none`` countermeasure are always included. Rows go to
``OUT/rows.jsonl`` (config hash, seed, stage seconds, process peak memory,
package versions); :mod:`toolkit.reports` renders tables and heatmaps.

Threat model of a cell (derived, never typed): white-box when the victim is one
of the defense's surrogates, gray-box when it shares a family with one of them,
black-box otherwise.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import resources as ilr
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

__all__ = ["ZERO_SHOT", "MatrixSpec", "DefenseSpec", "CountermeasureSpec", "run_matrix", "threat_model", "peak_memory_mib", "load_spec",
           "MatrixError"]

log = logging.getLogger(__name__)

_TOP_KEYS = {"name", "data", "models", "defenses", "countermeasures", "victims", "finetune", "metrics", "seeds",
             "zero_shot"}
METRIC_NAMES = ("accuracy", "psnr", "ssim", "linf", "l2", "trigger_length", "trigger_edit_distance")


class MatrixError(ValueError):
    """An invalid matrix spec (the message names the field)."""


@dataclass(frozen=True)
class DefenseSpec:
    """One defense row: registry ``name``, ``config``, surrogate model names, ensemble ``weights``."""

    label: str
    name: Optional[str]
    config: Dict[str, Any] = field(default_factory=dict)
    surrogates: Tuple[str, ...] = ()
    weights: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class CountermeasureSpec:
    """One countermeasure column: registry ``name`` (``a+b`` chains allowed) and ``config``."""

    label: str
    name: Optional[str]
    config: Dict[str, Any] = field(default_factory=dict)
    fit: Dict[str, Any] = field(default_factory=dict)
    fitted: Tuple[str, ...] = ()  # member names that must be fitted (derived from the registry)


#: ``fit`` keys each fitted countermeasure understands (see :meth:`_Runner.fit_countermeasure`)
FIT_KEYS = {"trigger_filter": {"scorer"}, "mix_clean": set(), "lightshed": {"defense", "surrogates", "runs"}}


@dataclass(frozen=True)
class MatrixSpec:
    """A whole matrix (see the module docstring); build with :meth:`from_dict` / :func:`load_spec`."""

    name: str
    data: Dict[str, Any]
    models: Dict[str, Dict[str, Any]]
    defenses: Tuple[DefenseSpec, ...]
    countermeasures: Tuple[CountermeasureSpec, ...]
    victims: Tuple[str, ...]
    finetune: Dict[str, Any]
    metrics: Tuple[str, ...]
    seeds: Tuple[int, ...]
    zero_shot: bool = False

    @classmethod
    def from_dict(cls, spec: Dict[str, Any]) -> "MatrixSpec":
        """Validate a plain dict (as read from YAML) into a spec; errors name the field."""
        from .attacks import COUNTERMEASURES
        from .defenses import DEFENSES

        if not isinstance(spec, dict):
            raise MatrixError("a matrix spec must be a mapping")
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise MatrixError(f"unknown spec keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}")
        models = dict(spec.get("models") or {})
        for key, m in models.items():
            if not isinstance(m, dict) or sum(k in m for k in ("tiny", "path", "zoo")) != 1:
                raise MatrixError(f"models.{key}: give exactly one of 'tiny: FAMILY', 'zoo: NAME' or 'path: FOLDER'")
            if "zoo" in m:
                from .zoo import ZOO

                if m["zoo"] not in ZOO or set(m) != {"zoo"}:
                    raise MatrixError(f"models.{key}.zoo: one of {sorted(ZOO)} and no other keys, got {m!r}")
        defenses = [DefenseSpec("clean", None)]
        for i, d in enumerate(_entries(spec.get("defenses"), "defenses", _DEFENSE_KEYS)):
            d = {**d, "config": _fractions(d.get("config") or {})}
            name = d.get("name")
            if name not in DEFENSES:
                raise MatrixError(f"defenses[{i}].name: unknown defense {name!r}; known: {DEFENSES.names()}")
            DEFENSES.create(name, **(d.get("config") or {}))  # validates the config now
            surrogates = tuple(_as_list(d.get("surrogates"), f"defenses[{i}].surrogates", str))
            for s in surrogates:
                if s not in models:
                    raise MatrixError(f"defenses[{i}].surrogates: unknown model {s!r}")
            if DEFENSES.get(name).needs_surrogate and not surrogates:
                raise MatrixError(f"defenses[{i}] ({name}) needs at least one surrogate")
            weights = tuple(float(w) for w in d["weights"]) if d.get("weights") is not None else None
            label = d.get("label") or name
            if label in ("clean", ZERO_SHOT):
                raise MatrixError(f"the label {label!r} is reserved for the no-defense and zero-shot controls")
            defenses.append(DefenseSpec(label, name, dict(d.get("config") or {}), surrogates, weights))
        labels = [d.label for d in defenses]
        if len(set(labels)) != len(labels):
            raise MatrixError(f"defense labels must be unique, got {labels}")
        data = dict(spec.get("data") or {"source": "digits"})
        _check_data(data)
        attacker_clean = data.get("attacker_clean", 0)
        if not isinstance(attacker_clean, int) or attacker_clean < 0:
            raise MatrixError(f"data.attacker_clean: a sample count >= 0, got {attacker_clean!r}")
        cms = [CountermeasureSpec("none", None)]
        for i, c in enumerate(_entries(spec.get("countermeasures"), "countermeasures", _COUNTERMEASURE_KEYS)):
            c = {**c, "config": _fractions(c.get("config") or {})}
            name = c.get("name")
            try:
                made = COUNTERMEASURES.create(name, **(c.get("config") or {}))
            except (KeyError, TypeError, ValueError) as exc:
                raise MatrixError(f"countermeasures[{i}]: {exc}") from None
            label = c.get("label") or name
            if label == "none":
                raise MatrixError("the label 'none' is reserved for the no-countermeasure control")
            fit = dict(c.get("fit") or {})
            fitted = [m.name for m in getattr(made, "transforms", [made]) if getattr(m, "needs_fit", False)]
            if fitted and not attacker_clean:
                raise MatrixError(f"countermeasures[{i}] ({label}): {fitted} must be fitted on the attacker's own "
                                  "clean data; set data.attacker_clean to a sample count")
            known = set().union(*(FIT_KEYS.get(n, set()) for n in fitted)) if fitted else set()
            if set(fit) - known:
                raise MatrixError(f"countermeasures[{i}].fit: unknown keys {sorted(set(fit) - known)}; "
                                  f"valid here: {sorted(known)}")
            scorer = fit.get("scorer", "ngram")
            if scorer != "ngram" and scorer not in models:
                raise MatrixError(f"countermeasures[{i}].fit.scorer: 'ngram' or a model name, got {scorer!r}")
            for s_name in fit.get("surrogates") or ():
                if s_name not in models:
                    raise MatrixError(f"countermeasures[{i}].fit.surrogates: unknown model {s_name!r}")
            cms.append(CountermeasureSpec(label, name, dict(c.get("config") or {}), fit, tuple(fitted)))
        victims = tuple(_as_list(spec.get("victims"), "victims", str))
        if not victims:
            raise MatrixError("victims: give at least one model name")
        for v in victims:
            if v not in models:
                raise MatrixError(f"victims: unknown model {v!r}")
        metrics = tuple(_as_list(spec.get("metrics"), "metrics", str)
                        or ("accuracy", "psnr", "ssim", "linf", "trigger_length"))
        bad = [m for m in metrics if m not in METRIC_NAMES]
        if bad:
            raise MatrixError(f"metrics: unknown {bad}; known: {list(METRIC_NAMES)}")
        seeds = tuple(_as_list(spec.get("seeds"), "seeds", int) or (0,))
        finetune = dict(spec.get("finetune") or {})
        _check_finetune(finetune, data)
        for i, c in enumerate(cms):
            if c.fit.get("defense", "same") not in ("same", *labels):
                raise MatrixError(f"countermeasures[{i - 1}].fit.defense: 'same' or a defense label, "
                                  f"got {c.fit['defense']!r}")
        zero_shot = spec.get("zero_shot", False)
        if not isinstance(zero_shot, bool):
            raise MatrixError(f"zero_shot: true or false, got {zero_shot!r}")
        return cls(str(spec.get("name", "matrix")), data, models,
                   tuple(defenses), tuple(cms), victims, finetune, metrics, seeds, zero_shot)


#: keys of one ``defenses`` / ``countermeasures`` entry
_DEFENSE_KEYS = frozenset({"label", "name", "config", "surrogates", "weights"})
_COUNTERMEASURE_KEYS = frozenset({"label", "name", "config", "fit"})


def _as_list(value: Any, where: str, kind: type) -> List[Any]:
    """A spec field that holds a list: ``None`` -> [], a single ``kind`` value -> [value]; every item must be
    a ``kind`` (bools are not ints); errors name the field and the expected type."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            article = "an" if kind is int else "a"
            raise MatrixError(f"{where}: {article} {kind.__name__} or a list of them, got {value!r}")
    return items


_FRACTION = re.compile(r"\s*\d+(\.\d+)?\s*/\s*\d+(\.\d+)?\s*")


def _fractions(config: Any) -> Any:
    """A component config with every "8/255"-style string (at any depth) read as a number, as the CLI's
    ``--eps 8/255`` and ``--set k=8/255`` do."""
    if isinstance(config, dict):
        return {k: _fractions(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_fractions(v) for v in config]
    if isinstance(config, str) and _FRACTION.fullmatch(config):
        num, den = (float(x) for x in config.split("/"))
        if den == 0:
            raise MatrixError(f"division by zero in {config!r}")
        return num / den
    return config


def _entries(value: Any, where: str, keys: frozenset) -> List[Dict[str, Any]]:
    """``defenses`` / ``countermeasures`` entries as dicts: a bare name stands for ``{name: NAME}``; unknown
    keys are errors naming the entry (``defenses[0]: unknown keys ['limt']``)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise MatrixError(f"{where}: a list of entries, got {value!r}")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise MatrixError(f"{where}[{i}]: a name or a mapping with keys {sorted(keys)}, got {entry!r}")
        extra = sorted(set(entry) - keys)
        if extra:
            raise MatrixError(f"{where}[{i}]: unknown keys {extra}; valid: {sorted(keys)}")
        out.append(entry)
    return out


#: ``data`` keys the runner itself reads (never passed to a dataset's config)
_RUNNER_DATA_KEYS = ("source", "attacker_clean")


def _data_source(data: Dict[str, Any]) -> str:
    """``data.source``: a registered dataset name or ``files``; default ``files`` when ``train``/``test`` are
    given, else ``digits``."""
    if "source" in data:
        return data["source"]
    return "files" if "train" in data or "test" in data else "digits"


def _dataset_config(data: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The registered dataset's config: the ``data`` keys the runner does not read; ``seed`` defaults to
    the matrix seed."""
    config = {k: v for k, v in data.items() if k not in _RUNNER_DATA_KEYS}
    config.setdefault("seed", seed)
    return config


def _check_data(data: Dict[str, Any]) -> None:
    """Validate ``data``: a registered ``source`` with a valid config, or ``files`` with ``train``/``test``."""
    from .datasets import DATASETS

    source = _data_source(data)
    if source == "files":
        for key in ("train", "test"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise MatrixError(f"data.{key}: the {key} split's file (.json / .jsonl) for source files, "
                                  f"got {data.get(key)!r}")
        extra = sorted(set(data) - {"train", "test", *_RUNNER_DATA_KEYS})
        if extra:
            raise MatrixError(f"data: unknown keys {extra} for source files; valid: attacker_clean, source, "
                              "test, train")
        return
    if not isinstance(source, str) or source not in DATASETS:
        raise MatrixError(f"data.source: unknown dataset {source!r}; known: files, {', '.join(DATASETS.names())}")
    try:
        DATASETS.create(source, **_dataset_config(data, 0))
    except TypeError as exc:
        raise MatrixError(f"data: {exc}") from None
    except ValueError as exc:
        raise MatrixError(f"data.{exc}") from None


def _check_finetune(finetune: Dict[str, Any], data: Dict[str, Any]) -> None:
    """Validate the recipe (``FineTune`` fields) and its optional ``pretrain`` stage before any work."""
    from .attacks import FineTune
    from .digits import TASKS

    pre = finetune.get("pretrain")
    try:
        FineTune(**{k: v for k, v in finetune.items() if k != "pretrain"})
    except (TypeError, ValueError) as exc:
        raise MatrixError(f"finetune: {exc}") from None
    if pre is None:
        return
    if not isinstance(pre, dict) or ("task" in pre) == ("data" in pre):
        raise MatrixError("finetune.pretrain: give exactly one of 'task: NAME' (digits) or 'data: FILE'")
    if "task" in pre:
        if _data_source(data) != "digits" or pre["task"] not in TASKS:
            raise MatrixError(f"finetune.pretrain.task: one of {sorted(TASKS)} on the digits source, "
                              f"got {pre['task']!r}")
        if not data.get("attacker_clean"):
            raise MatrixError("finetune.pretrain.task: pretraining uses the attacker's own clean images; "
                              "set data.attacker_clean")
    try:
        FineTune(**{k: v for k, v in pre.items() if k not in ("task", "data")})
    except (TypeError, ValueError) as exc:
        raise MatrixError(f"finetune.pretrain: {exc}") from None


def load_spec(path_or_name: Union[str, os.PathLike]) -> MatrixSpec:
    """Read a YAML spec file, or a spec shipped in the package by name (``"demo"``)."""
    import yaml

    path = Path(path_or_name)
    if path.is_file():
        text = path.read_text()
    else:
        packaged = ilr.files("toolkit.specs").joinpath(f"{path_or_name}.yaml")
        if not packaged.is_file():
            raise FileNotFoundError(f"no spec file {path} and no packaged spec {str(path_or_name)!r}")
        text = packaged.read_text()
    return MatrixSpec.from_dict(yaml.safe_load(text))


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def threat_model(victim: str, surrogates: Sequence[str], families: Dict[str, str],
                 identities: Optional[Dict[str, Any]] = None) -> str:
    """"white-box" (victim among the surrogates, or the same weights under another name when ``identities``
    maps model names to their content identity), "gray-box" (same family) or "black-box"."""
    if not surrogates:
        return "-"
    if victim in surrogates or (identities and any(identities[victim] == identities[s] for s in surrogates)):
        return "white-box"
    if families[victim] in {families[s] for s in surrogates}:
        return "gray-box"
    return "black-box"


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (MiB; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


class _Cache:
    """Content-addressed store of stage outputs under ``root`` (atomic writes)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "done.json").is_file()

    def meta(self, stage: str, key: str) -> Dict[str, Any]:
        return json.loads((self.path(stage, key) / "done.json").read_text())

    def commit(self, stage: str, key: str, build) -> Dict[str, Any]:
        """Run ``build(tmp_folder) -> meta`` into a temporary folder and move it into place."""
        final = self.path(stage, key)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = build(tmp)
        (tmp / "done.json").write_text(json.dumps(meta, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return meta


class _Runner:
    def __init__(self, spec: MatrixSpec, out: Path, progress: bool, device: str, dtype: str,
                 cache: Optional[Path] = None) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.device, self.dtype = device, dtype
        self.cache = _Cache(cache if cache is not None else out / "cache")
        self.folders: Dict[str, Path] = {}
        self.families: Dict[str, str] = {}
        self.counters = {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}

    # ----------------------------------------------------------------- models and data
    def model_folder(self, name: str) -> Path:
        from .surrogates import model_type_of
        from .surrogates.tiny import build_tiny
        from .surrogates.tiny.other import build_tiny_other, other_tiny_families

        if name in self.folders:
            return self.folders[name]
        m = self.spec.models[name]
        if "path" in m or "zoo" in m:
            from .zoo import zoo_folder

            folder = zoo_folder(m["zoo"], progress=self.progress) if "zoo" in m else Path(m["path"]).expanduser()
            self.families[name] = model_type_of(folder)
        else:
            family, seed = m["tiny"], int(m.get("seed", 0))
            folder = self.out / "models" / f"{family}-{seed}-{_hash(m)}"
            if not (folder / "done").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                kwargs = {k: v for k, v in m.items() if k not in {"tiny", "seed"}}
                builder = build_tiny_other if family in other_tiny_families() else build_tiny
                builder(family, folder, seed=seed, **kwargs)
                (folder / "done").write_text("")
            self.families[name] = family
        self.folders[name] = folder
        return folder

    def model_identity(self, name: str) -> Dict[str, Any]:
        m = self.spec.models[name]
        if "tiny" in m:
            return {"tiny": m}
        if "zoo" in m:
            from .zoo import ZOO, recipe_hash

            return {"zoo": m["zoo"], "recipe": recipe_hash(ZOO[m["zoo"]])}
        folder = self.model_folder(name)
        config = folder / "config.json"
        files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
        return {"path": str(folder), "config": config.read_text() if config.is_file() else None, "files": files}

    def load(self, name: str):
        from .surrogates import load_surrogate

        return load_surrogate(self.model_folder(name), device=self.device, dtype=self.dtype)

    def data(self, seed: int):
        """(owner's training split, test split, attacker's clean share or None) for ``seed``.

        ``data.source`` is a registered dataset (``toolkit.datasets.DATASETS``: ``digits``,
        ``scenes``, ...) built with the other ``data`` keys as its config (``seed``: the matrix
        seed unless ``data.seed`` is given), or ``files`` (``data.train`` / ``data.test``).
        With ``data.attacker_clean: N``, N training samples (seeded choice) are the
        attacker's own clean data, disjoint from what the owner protects.
        """
        from .data import load_dataset
        from .datasets import DATASETS

        d = self.spec.data
        source = _data_source(d)
        if source == "files":
            train, test = load_dataset(d["train"]), load_dataset(d["test"])
        else:
            train, test = DATASETS.create(source, **_dataset_config(d, seed)).build()
        n_att = int(d.get("attacker_clean", 0))
        if not n_att:
            return train, test, None
        if n_att >= len(train):
            raise MatrixError(f"data.attacker_clean={n_att} leaves no training data (the split has {len(train)})")
        order = np.random.default_rng(seed).permutation(len(train))
        owner = train.replace_samples([train[i] for i in sorted(order[n_att:])], f"{train.name}-owner")
        return owner, test, train.replace_samples([train[i] for i in sorted(order[:n_att])], "attacker-clean")

    # ----------------------------------------------------------------- stages
    def protect(self, dspec: DefenseSpec, train, seed: int) -> Tuple[str, Dict[str, Any]]:
        from .defenses import DEFENSES
        from .release import write_release
        from .surrogates import Ensemble

        key = _hash("protect", dspec.name, dspec.config, seed, [self.model_identity(s) for s in dspec.surrogates],
                    dspec.weights, self.spec.data)
        if not self.cache.has("protect", key):
            def build(tmp: Path) -> Dict[str, Any]:
                defense = DEFENSES.create(dspec.name, **{**dspec.config, "seed": seed})
                models = [self.load(s) for s in dspec.surrogates]
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

    def fit_identity(self, cm: CountermeasureSpec, dspec: DefenseSpec) -> Dict[str, Any]:
        """What a fitted countermeasure's result depends on beyond the protected set (for the cache key)."""
        if not cm.fitted:
            return {}
        ident: Dict[str, Any] = {"fit": cm.fit, "attacker_clean": self.spec.data.get("attacker_clean")}
        scorer = cm.fit.get("scorer", "ngram")
        if "trigger_filter" in cm.fitted and scorer != "ngram":
            ident["scorer"] = self.model_identity(scorer)
        if "lightshed" in cm.fitted:
            imitated = self.imitated_defense(cm, dspec)
            ident["defense"] = [imitated.name, imitated.config, imitated.weights]
            ident["surrogates"] = [self.model_identity(n) for n in (cm.fit.get("surrogates") or imitated.surrogates)]
        return ident

    def imitated_defense(self, cm: CountermeasureSpec, dspec: DefenseSpec) -> DefenseSpec:
        """The defense a LightShed column imitates: the row's own (``same``) or a named row."""
        label = cm.fit.get("defense", "same")
        return dspec if label == "same" else next(d for d in self.spec.defenses if d.label == label)

    def fit_countermeasure(self, transform, cm: CountermeasureSpec, dspec: DefenseSpec, attacker_clean, seed: int,
                           owner_train, released) -> Dict[str, Any]:
        """Fit every member of ``transform`` that needs it on the attacker's clean data; returns fit metrics.

        - ``trigger_filter``: scorer = an :class:`NgramLM` fitted on the attacker's clean
          questions (``fit.scorer: ngram``, default) or a named model's language model;
          threshold fitted on the same questions.
        - ``mix_clean``: the attacker's clean samples.
        - ``lightshed``: the attacker re-runs the imitated defense (``fit.defense``: the row's
          own or a label) with seed + 1000 on its clean images, with ``fit.surrogates`` (default
          the defense's own surrogate models), ``fit.runs`` times; reports the detector's AUROC
          on the owner's released vs original training images.
        """
        from .attacks.ngram import NgramLM
        from .defenses import DEFENSES
        from sklearn.metrics import roc_auc_score

        from .surrogates import Ensemble

        info: Dict[str, Any] = {}
        for member in getattr(transform, "transforms", [transform]):
            if not getattr(member, "needs_fit", False):
                continue
            if member.name == "mix_clean":
                member.fit(attacker_clean)
            elif member.name == "trigger_filter":
                questions = [s.question for s in attacker_clean]
                scorer_name = cm.fit.get("scorer", "ngram")
                scorer = NgramLM().fit(questions) if scorer_name == "ngram" else self.load(scorer_name)
                member.fit(scorer, questions)
                info["trigger_filter_threshold"] = member.fitted_threshold
            elif member.name == "lightshed":
                imitated = self.imitated_defense(cm, dspec)
                if imitated.name is None:
                    raise ValueError("lightshed: the clean row has no defense to imitate; name a defense row "
                                     "with fit.defense")
                defense = DEFENSES.create(imitated.name, **{**imitated.config, "seed": seed + 1000})
                models = [self.load(n) for n in (cm.fit.get("surrogates") or imitated.surrogates)]
                if imitated.weights is not None and not cm.fit.get("surrogates"):
                    models = [Ensemble(models, imitated.weights)]
                member.fit(defense, attacker_clean, models, runs=int(cm.fit.get("runs", 1)))
                scores = list(member.score(released)) + list(member.score(owner_train))
                info["detection_auroc"] = float(roc_auc_score([1] * len(released) + [0] * len(owner_train), scores))
            else:
                raise ValueError(f"{member.name}: the matrix runner does not know how to fit it")
        return info

    def transform(self, source_key: str, released, cm: CountermeasureSpec, seed: int, dspec: DefenseSpec,
                  owner_train, attacker_clean) -> Tuple[str, Dict[str, Any]]:
        from .attacks import COUNTERMEASURES
        from .defenses.base import Protection
        from .release import write_release

        key = _hash("transform", source_key, cm.name, cm.config, seed, self.fit_identity(cm, dspec))
        if not self.cache.has("transform", key):
            def build(tmp: Path) -> Dict[str, Any]:
                t0 = time.perf_counter()
                transform = COUNTERMEASURES.create(cm.name, **cm.config)
                if getattr(transform, "training_side", False):
                    return {"seconds": 0.0, "training_side": True}
                info = self.fit_countermeasure(transform, cm, dspec, attacker_clean, seed, owner_train, released)
                data = transform(released)
                info.update(_trigger_removal(released, data))
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

    def pretrained_victim(self, victim: str, seed: int, attacker_clean) -> Path:
        """The victim's folder, after ``finetune.pretrain`` when the recipe has one (cached per seed).

        Pretraining = a full fine-tune (its own ``FineTune`` fields) on a disjoint task: the
        attacker's clean images with another digits ``task`` (e.g. ``numeral``), or a ``data`` file.
        It gives a from-scratch tiny victim the visual priors a real LVLM arrives with.
        """
        from .attacks import FineTune
        from .data import load_dataset
        from .datasets import DATASETS
        from .surrogates import load_surrogate

        pre = self.spec.finetune.get("pretrain")
        if not pre:
            return self.model_folder(victim)
        key = _hash("pretrain", self.model_identity(victim), pre, self.spec.data, seed)
        if not self.cache.has("pretrain", key):
            def build(tmp: Path) -> Dict[str, Any]:
                if "task" in pre:
                    config = {**_dataset_config(self.spec.data, seed), "task": pre["task"]}
                    relabelled = {s.id: s for s in DATASETS.create("digits", **config).build()[0]}
                    data = attacker_clean.replace_samples([relabelled[s.id] for s in attacker_clean],
                                                          f"attacker-{pre['task']}")
                else:
                    data = load_dataset(pre["data"])
                model = load_surrogate(self.model_folder(victim), device=self.device, dtype=self.dtype)
                config = {k: v for k, v in pre.items() if k not in ("task", "data")}
                result = FineTune(**{**config, "seed": seed})(model, data, progress=self.progress)
                model.save(tmp / "model")
                self.counters["pretrain"] += 1
                return {"seconds": result.seconds, "samples": len(data)}
            self.cache.commit("pretrain", key, build)
        return self.cache.path("pretrain", key) / "model"

    def zero_shot(self, victim: str, test, seed: int, attacker_clean=None) -> Dict[str, Any]:
        """Clean-test accuracy of the victim as the attacker gets it (after ``finetune.pretrain``), not fine-tuned."""
        from .metrics import evaluate_answers
        from .surrogates import load_surrogate

        key = _hash("zero_shot", self.model_identity(victim), self.spec.finetune.get("pretrain"), self.spec.data, seed)
        if not self.cache.has("zero_shot", key):
            def build(tmp: Path) -> Dict[str, Any]:
                model = load_surrogate(self.pretrained_victim(victim, seed, attacker_clean), device=self.device,
                                       dtype=self.dtype)
                t0 = time.perf_counter()
                acc, preds = evaluate_answers(model, test)
                (tmp / "predictions.json").write_text(json.dumps(preds))
                return {"accuracy": acc, "eval_seconds": time.perf_counter() - t0, "peak_mib": peak_memory_mib()}
            self.cache.commit("zero_shot", key, build)
        return {"key": key, **self.cache.meta("zero_shot", key)}

    def finetune(self, data_key: str, training_set, victim: str, cm: Optional[CountermeasureSpec], test,
                 seed: int, attacker_clean=None) -> Dict[str, Any]:
        from .attacks import COUNTERMEASURES, FineTune
        from .metrics import evaluate_answers
        from .surrogates import load_surrogate

        recipe = {k: v for k, v in self.spec.finetune.items() if k != "pretrain"}
        key = _hash("finetune", data_key, self.model_identity(victim), self.spec.finetune,
                    cm.name if cm else None, cm.config if cm else None, seed)
        if not self.cache.has("finetune", key):
            def build(tmp: Path) -> Dict[str, Any]:
                model = load_surrogate(self.pretrained_victim(victim, seed, attacker_clean), device=self.device,
                                       dtype=self.dtype)
                training_cm = COUNTERMEASURES.create(cm.name, **cm.config) if cm else None
                result = FineTune(**{**recipe, "seed": seed})(model, training_set, progress=self.progress,
                                                              countermeasure=training_cm)
                t0 = time.perf_counter()
                acc, preds = evaluate_answers(model, test)
                (tmp / "predictions.json").write_text(json.dumps(preds))
                self.counters["finetune"] += 1
                return {"accuracy": acc, "finetune_seconds": result.seconds,
                        "eval_seconds": time.perf_counter() - t0, "peak_mib": peak_memory_mib()}
            self.cache.commit("finetune", key, build)
        return {"key": key, **self.cache.meta("finetune", key)}


def _stealth(train, released, metrics: Sequence[str]) -> Dict[str, Any]:
    from .metrics import L2, PSNR, SSIM, LInf

    out: Dict[str, Any] = {}
    changed = any((a.image != b.image).any() for a, b in zip(train, released))
    table = {"psnr": PSNR(), "ssim": SSIM(), "linf": LInf(), "l2": L2()}
    for m in metrics:
        if m in table:
            out[m] = table[m](train, released) if changed else None
    if "trigger_length" in metrics or "trigger_edit_distance" in metrics:
        lengths, edits = [], []
        for a, b in zip(train, released):
            words_a, words_b = a.question.split(), b.question.split()
            edits.append(_edit_distance(words_a, words_b))
            trig = b.meta.get("trigger") if hasattr(b, "meta") else None
            lengths.append(len(trig["words"]) if trig else 0)
        if "trigger_length" in metrics:
            out["trigger_length"] = sum(lengths) / len(lengths)
        if "trigger_edit_distance" in metrics:
            out["trigger_edit_distance"] = sum(edits) / len(edits)
    return out


def _trigger_removal(released, transformed) -> Dict[str, Any]:
    """Share of the inserted trigger words a text countermeasure removed (empty when nothing was inserted).

    Samples are matched by id; a trigger word counts as removed when the
    transformed question holds fewer copies of it than the released one.
    """
    from collections import Counter

    after = {s.id: Counter(s.question.split()) for s in transformed}
    total = removed = 0
    for s in released:
        trig = s.meta.get("trigger")
        if not trig or s.id not in after:
            continue
        before = Counter(s.question.split())
        for w, n in Counter(trig["words"]).items():
            total += n
            removed += min(n, max(0, before[w] - after[s.id][w]))
    return {"trigger_removed": removed / total} if total else {}


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


#: defense label of the rows that score each victim before fine-tuning (spec key ``zero_shot: true``)
ZERO_SHOT = "zero-shot"


def run_matrix(spec: Union[MatrixSpec, Dict[str, Any], str, os.PathLike], out: Union[str, os.PathLike], *,
               progress: bool = True, device: str = "cpu", dtype: str = "float32",
               cache: Optional[Union[str, os.PathLike]] = None) -> List[Dict[str, Any]]:
    """Run (or resume) a matrix into ``out``; returns the rows (also in ``out/rows.jsonl``) and renders reports.

    ``cache`` (default ``out/cache``) may be shared between specs: keys are content hashes, so a
    second spec with the same protections, data and seeds reuses them.
    """
    from .release import package_versions, read_release
    from .reports import write_reports

    if not isinstance(spec, MatrixSpec):
        spec = MatrixSpec.from_dict(spec) if isinstance(spec, dict) else load_spec(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = _Runner(spec, out, progress, device, dtype, Path(cache) if cache is not None else None)
    versions = package_versions()
    rows: List[Dict[str, Any]] = []
    total = len(spec.seeds) * len(spec.defenses) * len(spec.countermeasures) * len(spec.victims)
    bar = tqdm(total=total, desc=f"matrix {spec.name}", disable=not progress)
    for seed in spec.seeds:
        train, test, attacker_clean = runner.data(seed)
        for v in spec.victims:
            runner.model_folder(v)
            if spec.zero_shot:  # the victim before any fine-tuning: what the attacker starts from
                row = {"matrix": spec.name, "seed": seed, "defense": ZERO_SHOT, "defense_name": None,
                       "surrogates": [], "versions": versions, "countermeasure": "none", "victim": v,
                       "threat_model": "-"}
                try:
                    result = runner.zero_shot(v, test, seed, attacker_clean)
                    row.update({"accuracy": result["accuracy"], "eval_seconds": result["eval_seconds"],
                                "peak_mib": result["peak_mib"], "error": None})
                except Exception as exc:
                    log.warning("zero-shot %s failed: %s", v, exc)
                    row.update({"stage": "zero_shot", "error": f"{type(exc).__name__}: {exc}"})
                rows.append(row)
        identities = {m: runner.model_identity(m) for m in spec.models}
        for dspec in spec.defenses:
            for s in dspec.surrogates:
                runner.model_folder(s)
            base = {"matrix": spec.name, "seed": seed, "defense": dspec.label, "defense_name": dspec.name,
                    "surrogates": list(dspec.surrogates), "versions": versions}
            try:
                if dspec.name is None:
                    pkey, pmeta, released = _hash("clean", spec.data, seed), {"seconds": 0.0}, train
                else:
                    pkey, pmeta = runner.protect(dspec, train, seed)
                    released = read_release(runner.cache.path("protect", pkey) / "release")
                stealth = _stealth(train, released, spec.metrics)
            except Exception as exc:  # an error row per cell of this defense; the matrix goes on
                log.warning("protect %s failed: %s", dspec.label, exc)
                for cm in spec.countermeasures:
                    for v in spec.victims:
                        rows.append({**base, "countermeasure": cm.label, "victim": v, "stage": "protect",
                                     "error": f"{type(exc).__name__}: {exc}",
                                     "threat_model": threat_model(v, dspec.surrogates, runner.families, identities)})
                        bar.update(1)
                continue
            for cm in spec.countermeasures:
                for v in spec.victims:
                    row = {**base, "countermeasure": cm.label, "victim": v,
                           "threat_model": threat_model(v, dspec.surrogates, runner.families, identities),
                           "config_hash": _hash(dspec.name, dspec.config, dspec.surrogates, cm.name, cm.config, v,
                                                spec.finetune),
                           "protect_seconds": pmeta.get("seconds", 0.0), **stealth}
                    stage = "transform"
                    try:
                        training_cm = None
                        if cm.name is None:
                            tkey, training_set = pkey, released
                        else:
                            tkey, tmeta = runner.transform(pkey, released, cm, seed, dspec, train, attacker_clean)
                            row.update({k: tmeta[k] for k in ("detection_auroc", "trigger_removed",
                                                              "trigger_filter_threshold") if k in tmeta})
                            if tmeta["training_side"]:
                                training_set, training_cm = released, cm
                            elif tmeta.get("unchanged"):
                                tkey, training_set = pkey, released
                            else:
                                training_set = read_release(runner.cache.path("transform", tkey) / "release")
                            row["transform_seconds"] = tmeta.get("seconds", 0.0)
                        stage = "finetune"
                        result = runner.finetune(tkey, training_set, v, training_cm, test, seed, attacker_clean)
                        row.update({"accuracy": result["accuracy"], "finetune_seconds": result["finetune_seconds"],
                                    "eval_seconds": result["eval_seconds"], "peak_mib": result["peak_mib"],
                                    "error": None})
                    except Exception as exc:
                        log.warning("cell %s / %s / %s failed at %s: %s", dspec.label, cm.label, v, stage, exc)
                        row.update({"stage": stage, "error": f"{type(exc).__name__}: {exc}"})
                    rows.append(row)
                    bar.update(1)
    bar.close()
    tmp = out / "rows.jsonl.tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    os.replace(tmp, out / "rows.jsonl")
    (out / "spec.json").write_text(json.dumps(spec, default=lambda o: o.__dict__, indent=2))
    write_reports(out)
    log.info("matrix %s: stages computed this run: %s", spec.name, runner.counters)
    runner_counts = dict(runner.counters)
    (out / "last_run.json").write_text(json.dumps({"computed": runner_counts}))
    return rows
