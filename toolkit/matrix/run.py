"""The cell loop: every (seed, defense, countermeasure, victim) of a spec through the cached stages."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tqdm.auto import tqdm

from ..metrics import METRICS
from ..release import package_versions, read_release
from ..reports import write_reports
from .cache import content_hash
from .models import threat_model
from .spec import ZERO_SHOT, MatrixError, MatrixSpec, MetricSpec, load_spec
from .stages import Stages

__all__ = ["run_matrix", "stealth_metrics"]

log = logging.getLogger(__name__)


def stealth_metrics(train, released, metrics: Sequence[Union[str, MetricSpec]],
                    load_model: Optional[Callable[[str], Any]] = None,
                    instances: Optional[Dict[Any, Any]] = None) -> Dict[str, Any]:
    """The spec's metrics that compare the owner's clean training set with its release (``METRICS`` entries of
    kind ``images`` / ``text``); a metric that does not apply (image metrics of a text-only release) is None.

    ``metrics``: names or :class:`MetricSpec` entries (their ``config``; a ``model`` key is loaded with
    ``load_model`` and passed as the metric's ``scorer``). ``instances``: a dict kept between calls so each
    metric is built, and each model loaded, once per run.
    """
    instances = {} if instances is None else instances
    out: Dict[str, Any] = {}
    for entry in metrics:
        m = MetricSpec(entry) if isinstance(entry, str) else entry
        if METRICS.get(m.name).kind not in ("images", "text"):
            continue
        key = ("metric", m.name, content_hash(m.config), m.model)
        if key not in instances:
            extra = {}
            if m.model is not None:
                if load_model is None:
                    raise ValueError(f"metric {m.name}: model {m.model!r} needs load_model (model key -> model)")
                if ("model", m.model) not in instances:
                    instances[("model", m.model)] = load_model(m.model)
                extra["scorer"] = instances[("model", m.model)]
            instances[key] = METRICS.create(m.name, **m.config, **extra)
        metric = instances[key]
        out[m.name] = metric(train, released) if metric.applies(train, released) else None
    return out


def run_matrix(spec: Union[MatrixSpec, Dict[str, Any], str, os.PathLike], out: Union[str, os.PathLike], *,
               progress: bool = True, device: str = "cpu", dtype: str = "float32",
               cache: Optional[Union[str, os.PathLike]] = None, force: bool = False,
               shard: Optional[Tuple[int, int]] = None) -> List[Dict[str, Any]]:
    """Run (or resume) a matrix into ``out``; returns the rows (also in ``out/rows.jsonl``) and renders reports.

    ``cache`` (default ``out/cache``) may be shared between specs: keys are content hashes, so a
    second spec with the same protections, data and seeds reuses them. A folder holding the results of a
    spec with another name is refused unless ``force`` (its rows would be replaced).

    ``shard=(i, n)``: run only worker i's share of n (0 <= i < n). The units of work are
    (seed, defense row) pairs (a row's protection and all its cells stay on one worker) and the
    zero-shot rows of a seed, dealt round-robin in spec order, so the n workers together run every cell
    once. Workers share ``out`` (and its cache: entries are built under locks) on one filesystem, each
    writes ``rows-shard-I-of-N.jsonl``, and :func:`toolkit.reports.read_rows` (``mmguard report``)
    merges them.
    """
    if not isinstance(spec, MatrixSpec):
        spec = MatrixSpec.from_dict(spec) if isinstance(spec, dict) else load_spec(spec)
    out = Path(out)
    previous = out / "spec.json"
    if previous.is_file() and not force:
        try:
            other = json.loads(previous.read_text()).get("name")
        except (ValueError, AttributeError):
            other = None
        if other != spec.name:
            raise MatrixError(f"{out} holds the results of spec {other!r}, not {spec.name!r}; choose another output "
                              "folder or pass --force (force=True) to replace its rows")
    out.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(spec, default=lambda o: o.__dict__, indent=2))
    stages = Stages(spec, out, progress, device, dtype, Path(cache) if cache is not None else None)
    models = stages.models
    versions = package_versions()
    mine = _shard_filter(spec, shard)
    metric_instances: Dict[Any, Any] = {}  # built once per run (a metric's model is loaded once)
    if shard is None:
        for stale in out.glob("rows-shard-*.jsonl"):  # a sharded run's rows would be counted twice
            stale.unlink()
        rows = _RowLog(out / "rows.jsonl")
    else:
        (out / "rows.jsonl").unlink(missing_ok=True)
        rows = _RowLog(out / f"rows-shard-{shard[0]}-of-{shard[1]}.jsonl")
    total = len(spec.seeds) * len(spec.defenses) * len(spec.countermeasures) * len(spec.victims)
    bar = tqdm(total=total, desc=f"matrix {spec.name}", disable=not progress)
    for seed in spec.seeds:
        train, test, attacker_clean = stages.data(seed)
        chance = majority_share(test)
        for v in spec.victims:
            models.folder(v)
            if spec.zero_shot and mine(seed, ZERO_SHOT):  # the victim before any fine-tuning
                row = {"matrix": spec.name, "seed": seed, "defense": ZERO_SHOT, "defense_name": None,
                       "surrogates": [], "versions": versions, "countermeasure": "none", "victim": v,
                       "threat_model": "-"}
                try:
                    result = stages.zero_shot(v, test, seed, attacker_clean)
                    row.update({"accuracy": result["accuracy"], "eval_seconds": result["eval_seconds"],
                                "peak_mib": result["peak_mib"], "n_test": len(test), "error": None})
                except Exception as exc:
                    log.warning("zero-shot %s failed: %s", v, exc)
                    row.update({"stage": "zero_shot", "error": f"{type(exc).__name__}: {exc}"})
                rows.append(row)
        identities = {m: models.identity(m) for m in spec.models}
        for dspec in spec.defenses:
            if not mine(seed, dspec.label):
                bar.update(len(spec.countermeasures) * len(spec.victims))
                continue
            for s in dspec.surrogates:
                models.folder(s)
            base = {"matrix": spec.name, "seed": seed, "defense": dspec.label, "defense_name": dspec.name,
                    "surrogates": list(dspec.surrogates), "versions": versions}
            try:
                if dspec.name is None:
                    pkey, pmeta, released = content_hash("clean", spec.data, seed), {"seconds": 0.0}, train
                else:
                    pkey, pmeta = stages.protect(dspec, train, seed)
                    released = read_release(stages.cache.path("protect", pkey) / "release")
                # recomputed every run, never cached: a changed metric config or model cannot go stale
                stealth = stealth_metrics(train, released, spec.metrics, models.load,
                                          metric_instances)
            except Exception as exc:  # an error row per cell of this defense; the matrix goes on
                log.warning("protect %s failed: %s", dspec.label, exc)
                for cm in spec.countermeasures:
                    for v in spec.victims:
                        rows.append({**base, "countermeasure": cm.label, "victim": v, "stage": "protect",
                                     "error": f"{type(exc).__name__}: {exc}",
                                     "threat_model": threat_model(v, dspec.surrogates, models.families, identities)})
                        bar.update(1)
                continue
            for cm in spec.countermeasures:
                for v in spec.victims:
                    row = {**base, "countermeasure": cm.label, "victim": v,
                           "threat_model": threat_model(v, dspec.surrogates, models.families, identities),
                           "config_hash": content_hash(dspec.name, dspec.config, dspec.surrogates, cm.name,
                                                       cm.config, v, spec.finetune),
                           "protect_seconds": pmeta.get("seconds", 0.0), **stealth}
                    stage = "transform"
                    try:
                        training_cm = None
                        if cm.name is None:
                            tkey, training_set = pkey, released
                        else:
                            tkey, tmeta = stages.transform(pkey, released, cm, seed, dspec, train, attacker_clean)
                            row.update({k: v_ for k, v_ in tmeta.items()
                                        if k not in ("seconds", "training_side", "unchanged")})
                            if tmeta["training_side"]:
                                training_set, training_cm = released, cm
                            elif tmeta.get("unchanged"):
                                tkey, training_set = pkey, released
                            else:
                                training_set = read_release(stages.cache.path("transform", tkey) / "release")
                            row["transform_seconds"] = tmeta.get("seconds", 0.0)
                        stage = "finetune"
                        result = stages.finetune(tkey, training_set, v, training_cm, test, seed, attacker_clean)
                        row.update({"accuracy": result["accuracy"], "finetune_seconds": result["finetune_seconds"],
                                    "eval_seconds": result["eval_seconds"], "peak_mib": result["peak_mib"],
                                    "train_losses": result.get("train_losses"), "error": None})
                    except Exception as exc:
                        log.warning("cell %s / %s / %s failed at %s: %s", dspec.label, cm.label, v, stage, exc)
                        row.update({"stage": stage, "error": f"{type(exc).__name__}: {exc}"})
                    row["n_test"], row["chance"] = len(test), chance
                    rows.append(row)
                    bar.update(1)
    bar.close()
    write_reports(out)
    log.info("matrix %s: stages computed this run: %s", spec.name, stages.counters)
    (out / "last_run.json").write_text(json.dumps({"computed": dict(stages.counters)}))
    return list(rows)


def majority_share(test) -> float:
    """Accuracy of always giving the test split's most common answer (the chance level a table is read
    against)."""
    counts = Counter(s.answer.strip().lower() for s in test)
    return max(counts.values()) / len(test) if len(test) else 0.0


def _shard_filter(spec: MatrixSpec, shard: Optional[Tuple[int, int]]):
    """``mine(seed, label)``: whether the unit (seed, defense label or zero-shot) is this worker's."""
    if shard is None:
        return lambda seed, label: True
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise MatrixError(f"shard: worker index i and count n with 0 <= i < n, got {shard!r}")
    labels = ([ZERO_SHOT] if spec.zero_shot else []) + [d.label for d in spec.defenses]
    units = [(seed, label) for seed in spec.seeds for label in labels]
    owned = {u for k, u in enumerate(units) if k % n == i}
    return lambda seed, label: (seed, label) in owned


class _RowLog(list):
    """The run's rows, each also appended to ``rows.jsonl`` (flushed) as soon as it exists, so an interrupted
    run leaves the rows of every finished cell for ``mmguard report``; the file is started afresh per run."""

    def __init__(self, path) -> None:
        super().__init__()
        self.path = path
        path.write_text("")

    def append(self, row: Dict[str, Any]) -> None:  # type: ignore[override]
        super().append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
