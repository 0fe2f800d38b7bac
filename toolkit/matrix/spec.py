"""Matrix specs: the validated description of a defense x countermeasure x victim experiment.

A :class:`MatrixSpec` (YAML or a Python dict) names the data, the models, the
defenses (each with its surrogates), the countermeasures (chains allowed), the
victims, the fine-tuning recipe and the seeds; :func:`load_spec` reads one.
Validation happens here, before any work: every error names the field.
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from importlib import resources as ilr
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from ..attacks import COUNTERMEASURES
from ..attacks.finetune import FineTune
from ..datasets import DATASETS
from ..defenses import DEFENSES
from ..digits import TASKS
from ..metrics import DEFAULT_METRICS, METRICS
from ..registry import import_plugin
from ..surrogates import check_prompt_template
from ..zoo import ZOO

__all__ = ["ZERO_SHOT", "MatrixSpec", "DefenseSpec", "CountermeasureSpec", "MetricSpec", "MatrixError", "load_spec",
           "data_source", "dataset_config", "RUNNER_DATA_KEYS"]

_TOP_KEYS = {"name", "data", "models", "defenses", "countermeasures", "victims", "finetune", "metrics", "seeds",
             "zero_shot", "plugins"}
#: defense label of the rows that score each victim before fine-tuning (spec key ``zero_shot: true``)
ZERO_SHOT = "zero-shot"

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
    fitted: Tuple[str, ...] = ()  # member names that must be fitted (derived from the countermeasure classes)


@dataclass(frozen=True)
class MetricSpec:
    """One ``metrics`` entry: registry ``name`` (the result column it fills), its ``config`` and, for a metric
    that scores text with a language model the user owns, the ``model`` key of ``models:`` it uses."""

    name: str
    config: Dict[str, Any] = field(default_factory=dict)
    model: Optional[str] = None


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
    #: the ``metrics`` entries with their config and model
    metrics: Tuple[MetricSpec, ...]
    seeds: Tuple[int, ...]
    zero_shot: bool = False
    plugins: Tuple[str, ...] = ()

    @property
    def metric_names(self) -> Tuple[str, ...]:
        """The names of the ``metrics`` entries (the result columns they fill)."""
        return tuple(m.name for m in self.metrics)

    @classmethod
    def from_dict(cls, spec: Dict[str, Any]) -> "MatrixSpec":
        """Validate a plain dict (as read from YAML) into a spec; errors name the field."""
        if not isinstance(spec, dict):
            raise MatrixError("a matrix spec must be a mapping")
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise MatrixError(f"unknown spec keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}")
        plugins = tuple(_as_list(spec.get("plugins"), "plugins", str))
        for module in plugins:  # before anything is looked up: they register components
            try:
                import_plugin(module)
            except ImportError as exc:
                raise MatrixError(f"plugins: cannot import {module!r}: {exc}") from None
        if not isinstance(spec.get("name", "matrix"), str):
            raise MatrixError(f"name: a string, got {spec.get('name')!r}")
        models = _mapping(spec.get("models"), "models")
        for key, m in models.items():
            if not isinstance(m, dict) or sum(k in m for k in ("tiny", "path", "zoo")) != 1:
                raise MatrixError(f"models.{key}: give exactly one of 'tiny: FAMILY', 'zoo: NAME' or 'path: FOLDER'")
            if "path" in m:
                extra = sorted(set(m) - {"path", "prompt_template"})
                if extra:
                    raise MatrixError(f"models.{key}: unknown keys {extra} for a path model; valid: path, prompt_template")
                if "prompt_template" in m:
                    try:
                        check_prompt_template(m["prompt_template"])
                    except (TypeError, ValueError) as exc:
                        raise MatrixError(f"models.{key}.prompt_template: {exc}") from None
            if "tiny" in m:
                _check_tiny(key, m)
            if "zoo" in m:
                if m["zoo"] not in ZOO or set(m) != {"zoo"}:
                    raise MatrixError(f"models.{key}.zoo: one of {sorted(ZOO)} and no other keys, got {m!r}")
        defenses = [DefenseSpec("clean", None)]
        for i, d in enumerate(_entries(spec.get("defenses"), "defenses", _DEFENSE_KEYS)):
            d = {**d, "config": _fractions(_mapping(d.get("config"), f"defenses[{i}].config"))}
            name = d.get("name")
            if not isinstance(name, str) or name not in DEFENSES:
                raise MatrixError(f"defenses[{i}].name: unknown defense {name!r}; known: {DEFENSES.names()}")
            try:
                DEFENSES.create(name, **d["config"])  # validates the config now
            except (TypeError, ValueError) as exc:
                raise MatrixError(f"defenses[{i}].config: {exc}") from None
            surrogates = tuple(_as_list(d.get("surrogates"), f"defenses[{i}].surrogates", str))
            for s in surrogates:
                if s not in models:
                    raise MatrixError(f"defenses[{i}].surrogates: unknown model {s!r}")
            if DEFENSES.get(name).needs_surrogate and not surrogates:
                raise MatrixError(f"defenses[{i}] ({name}) needs at least one surrogate")
            weights = tuple(float(w) for w in _as_list(d.get("weights"), f"defenses[{i}].weights", (int, float))) \
                if d.get("weights") is not None else None
            label = d.get("label") or name
            if not isinstance(label, str):
                raise MatrixError(f"defenses[{i}].label: a string, got {label!r}")
            if label in ("clean", ZERO_SHOT):
                raise MatrixError(f"the label {label!r} is reserved for the no-defense and zero-shot controls")
            defenses.append(DefenseSpec(label, name, dict(d.get("config") or {}), surrogates, weights))
        labels = [d.label for d in defenses]
        if len(set(labels)) != len(labels):
            raise MatrixError(f"defense labels must be unique, got {labels}")
        data = _mapping(spec.get("data"), "data") or {"source": "digits"}
        _check_data(data)
        attacker_clean = data.get("attacker_clean", 0)
        if not isinstance(attacker_clean, int) or attacker_clean < 0:
            raise MatrixError(f"data.attacker_clean: a sample count >= 0, got {attacker_clean!r}")
        cms = [CountermeasureSpec("none", None)]
        for i, c in enumerate(_entries(spec.get("countermeasures"), "countermeasures", _COUNTERMEASURE_KEYS)):
            c = {**c, "config": _fractions(_mapping(c.get("config"), f"countermeasures[{i}].config"))}
            name = c.get("name")
            if not isinstance(name, str):
                raise MatrixError(f"countermeasures[{i}].name: a registered countermeasure name, got {name!r}")
            try:
                made = COUNTERMEASURES.create(name, **(c.get("config") or {}))
            except (KeyError, TypeError, ValueError) as exc:
                raise MatrixError(f"countermeasures[{i}]: {exc}") from None
            label = c.get("label") or name
            if not isinstance(label, str):
                raise MatrixError(f"countermeasures[{i}].label: a string, got {label!r}")
            if label == "none":
                raise MatrixError("the label 'none' is reserved for the no-countermeasure control")
            fit = _mapping(c.get("fit"), f"countermeasures[{i}].fit")
            fitted_members = [m for m in made.members() if m.needs_fit]
            fitted = [m.name for m in fitted_members]
            if fitted and not attacker_clean:
                raise MatrixError(f"countermeasures[{i}] ({label}): {fitted} must be fitted on the attacker's own "
                                  "clean data; set data.attacker_clean to a sample count")
            known = set().union(*(m.fit_keys for m in fitted_members)) if fitted else set()
            if set(fit) - known:
                raise MatrixError(f"countermeasures[{i}].fit: unknown keys {sorted(set(fit) - known)}; "
                                  f"valid here: {sorted(known)}")
            for member in fitted_members:
                try:
                    member.check_fit(fit, set(models), labels)
                except ValueError as exc:
                    raise MatrixError(f"countermeasures[{i}].fit.{exc}") from None
            cms.append(CountermeasureSpec(label, name, dict(c.get("config") or {}), fit, tuple(fitted)))
        victims = tuple(_as_list(spec.get("victims"), "victims", str))
        if not victims:
            raise MatrixError("victims: give at least one model name")
        for v in victims:
            if v not in models:
                raise MatrixError(f"victims: unknown model {v!r}")
        metrics = _metric_entries(spec.get("metrics"), models) or tuple(MetricSpec(n) for n in DEFAULT_METRICS)
        seeds = tuple(_as_list(spec.get("seeds"), "seeds", int) or (0,))
        finetune = _mapping(spec.get("finetune"), "finetune")
        _check_finetune(finetune, data)
        zero_shot = spec.get("zero_shot", False)
        if not isinstance(zero_shot, bool):
            raise MatrixError(f"zero_shot: true or false, got {zero_shot!r}")
        return cls(str(spec.get("name", "matrix")), data, models,
                   tuple(defenses), tuple(cms), victims, finetune, metrics, seeds, zero_shot, plugins)


#: keys of one ``defenses`` / ``countermeasures`` entry
_DEFENSE_KEYS = frozenset({"label", "name", "config", "surrogates", "weights"})
_COUNTERMEASURE_KEYS = frozenset({"label", "name", "config", "fit"})


def _check_tiny(key: str, m: Dict[str, Any]) -> None:
    """A ``tiny:`` model entry: a known family, an int ``seed``, and only keys its builder accepts."""
    from ..surrogates.tiny import TINY_BUILDERS
    from ..surrogates.tiny.other import OTHER_TINY_BUILDERS

    builders = {**TINY_BUILDERS, **OTHER_TINY_BUILDERS}
    family = m["tiny"]
    if not isinstance(family, str) or family not in builders:
        raise MatrixError(f"models.{key}.tiny: unknown family {family!r}; known: {sorted(builders)}")
    if "seed" in m and (not isinstance(m["seed"], int) or isinstance(m["seed"], bool)):
        raise MatrixError(f"models.{key}.seed: an int, got {m['seed']!r}")
    params = inspect.signature(builders[family]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL} - {"path"}
    unknown = sorted(set(m) - {"tiny", "seed"} - allowed)
    if unknown:
        raise MatrixError(f"models.{key}: unknown keys {unknown} for a tiny {family}; valid: tiny, seed, "
                          f"{', '.join(sorted(allowed - {'seed'}))}")


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    """A spec field that holds a mapping (``None`` -> {}); anything else is an error naming the field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MatrixError(f"{where}: a mapping (key: value), got {value!r}")
    return dict(value)


def _as_list(value: Any, where: str, kind: Any) -> List[Any]:
    """A spec field that holds a list: ``None`` -> [], a single ``kind`` value -> [value]; every item must be
    a ``kind`` (bools are not ints); errors name the field and the expected type."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, kind) or (kind is not str and isinstance(item, bool)):
            what = {int: "an int", str: "a string"}.get(kind, "a number")
            raise MatrixError(f"{where}: {what} or a list of them, got {value!r}")
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


#: keys of one ``metrics`` entry
_METRIC_KEYS = frozenset({"name", "config", "model"})


def _metric_entries(value: Any, models: Dict[str, Any]) -> Tuple[MetricSpec, ...]:
    """``metrics`` entries: a bare name or ``{name, config, model}``; the config is validated by building the
    metric, ``model`` must be a key of ``models`` and is required exactly by the metrics that need one."""
    if value is None:
        return ()
    out = []
    for i, entry in enumerate(_entries([value] if isinstance(value, (str, dict)) else value, "metrics",
                                       _METRIC_KEYS)):
        where = f"metrics[{i}]"
        name = entry.get("name")
        if not isinstance(name, str) or name not in METRICS:
            raise MatrixError(f"{where}.name: unknown metric {name!r}; known: {METRICS.names()}")
        config = _fractions(_mapping(entry.get("config"), f"{where}.config"))
        model = entry.get("model")
        if METRICS.get(name).needs_model:
            if not isinstance(model, str) or model not in models:
                raise MatrixError(f"{where}.model: {name} scores questions with a language model you own; give the "
                                  f"key of one of models: {sorted(models)}, got {model!r}")
        elif model is not None:
            raise MatrixError(f"{where}.model: {name} uses no model, got {model!r}")
        try:
            METRICS.create(name, **config)  # validates the config now
        except (TypeError, ValueError) as exc:
            raise MatrixError(f"{where}.config: {exc}") from None
        out.append(MetricSpec(name, config, model))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MatrixError(f"metrics: {twice} listed more than once (each metric fills one result column)")
    return tuple(out)


#: ``data`` keys the runner itself reads (never passed to a dataset's config)
RUNNER_DATA_KEYS = ("source", "attacker_clean")


def data_source(data: Dict[str, Any]) -> str:
    """``data.source``: a registered dataset name or ``files``; default ``files`` when ``train``/``test`` are
    given, else ``digits``."""
    if "source" in data:
        return data["source"]
    return "files" if "train" in data or "test" in data else "digits"


def dataset_config(data: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The registered dataset's config: the ``data`` keys the runner does not read; ``seed`` defaults to
    the matrix seed."""
    config = {k: v for k, v in data.items() if k not in RUNNER_DATA_KEYS}
    config.setdefault("seed", seed)
    return config


def _check_data(data: Dict[str, Any]) -> None:
    """Validate ``data``: a registered ``source`` with a valid config, or ``files`` with ``train``/``test``."""
    source = data_source(data)
    if source == "files":
        for key in ("train", "test"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise MatrixError(f"data.{key}: the {key} split's file (.json / .jsonl) for source files, "
                                  f"got {data.get(key)!r}")
        extra = sorted(set(data) - {"train", "test", *RUNNER_DATA_KEYS})
        if extra:
            raise MatrixError(f"data: unknown keys {extra} for source files; valid: attacker_clean, source, "
                              "test, train")
        return
    if not isinstance(source, str) or source not in DATASETS:
        raise MatrixError(f"data.source: unknown dataset {source!r}; known: files, {', '.join(DATASETS.names())}")
    try:
        DATASETS.create(source, **dataset_config(data, 0))
    except TypeError as exc:
        raise MatrixError(f"data: {exc}") from None
    except ValueError as exc:
        raise MatrixError(f"data.{exc}") from None


def _check_finetune(finetune: Dict[str, Any], data: Dict[str, Any]) -> None:
    """Validate the recipe (``FineTune`` fields) and its optional ``pretrain`` stage before any work."""
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
        if data_source(data) != "digits" or pre["task"] not in TASKS:
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
    """Read a YAML spec file, or a spec shipped in the package by name (``"demo"``).

    Relative file paths in a spec file (``data.train`` / ``data.test``, ``finetune.pretrain.data``,
    ``models.*.path``, ``.py`` entries of ``plugins``, a metric's file config keys such as LPIPS's ``backbone``)
    are resolved against the spec file's folder, so a spec works from any working directory.
    """
    path = Path(path_or_name)
    if path.is_file():
        raw = yaml.safe_load(path.read_text())
        return MatrixSpec.from_dict(_resolve_paths(raw, path.resolve().parent))
    else:
        packaged = ilr.files("toolkit.specs").joinpath(f"{path_or_name}.yaml")
        if not packaged.is_file():
            raise FileNotFoundError(f"no spec file {path} and no packaged spec {str(path_or_name)!r}")
        text = packaged.read_text()
    return MatrixSpec.from_dict(yaml.safe_load(text))


def _resolve_paths(spec: Any, base: Path) -> Any:
    """``spec`` with its relative file paths made absolute against ``base`` (the spec file's folder)."""
    if not isinstance(spec, dict):
        return spec

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            return str(base / value)
        return value

    spec = dict(spec)
    if isinstance(spec.get("data"), dict):
        spec["data"] = {k: fix(v) if k in ("train", "test") else v for k, v in spec["data"].items()}
    if isinstance(spec.get("models"), dict):
        spec["models"] = {k: ({**m, "path": fix(m["path"])} if isinstance(m, dict) and "path" in m else m)
                          for k, m in spec["models"].items()}
    finetune = spec.get("finetune")
    if isinstance(finetune, dict) and isinstance(finetune.get("pretrain"), dict) and "data" in finetune["pretrain"]:
        spec["finetune"] = {**finetune, "pretrain": {**finetune["pretrain"], "data": fix(finetune["pretrain"]["data"])}}
    if isinstance(spec.get("metrics"), list):  # a metric's file-path config keys (``path_keys``)
        spec["metrics"] = [
            {**m, "config": {k: fix(v) if k in METRICS.get(m["name"]).path_keys else v for k, v in m["config"].items()}}
            if isinstance(m, dict) and isinstance(m.get("config"), dict) and isinstance(m.get("name"), str)
            and m["name"] in METRICS else m
            for m in spec["metrics"]]
    plugins = spec.get("plugins")
    if plugins is not None:
        items = plugins if isinstance(plugins, list) else [plugins]
        spec["plugins"] = [fix(p) if isinstance(p, str) and p.endswith(".py") else p for p in items]
    return spec


