"""Defense x countermeasure x victim matrices: spec, cached resumable runner, threat-model labels.

A :class:`MatrixSpec` (YAML or a Python dict; :mod:`.spec`) names the data, the
models, the defenses (each with its surrogates), the countermeasures (chains
allowed), the victims, the fine-tuning recipe and the seeds. :func:`run_matrix`
(:mod:`.run`) walks the dependency graph with a content-addressed cache under
``OUT/cache`` (:mod:`.cache`), one stage at a time (:mod:`.stages`):

- protect once per (defense config, surrogates, data, seed) -> a release folder;
- transform once per (protected set, countermeasure, seed) -> a release folder
  (countermeasures that must be fitted are fitted there from one
  :class:`~toolkit.attacks.FitContext` on the attacker's own clean share of the
  training data, ``data.attacker_clean`` samples split off before protection);
- fine-tune + evaluate once per (training set, victim, recipe, seed) -> a JSON result.

Every cached item is written atomically, so a killed run resumes where it
stopped and nothing finished is recomputed. A failing stage becomes an error
row carrying its message; the rest of the matrix continues. The clean control
(no defense) and the ``none`` countermeasure are always included. Rows go to
``OUT/rows.jsonl`` (config hash, seed, stage seconds, process peak memory,
package versions, the spec's ``metrics`` from the ``METRICS`` registry);
:mod:`toolkit.reports` renders tables and heatmaps.

Threat model of a cell (derived, never typed; :func:`threat_model`): white-box
when the victim is one of the defense's surrogates (or the same weights), gray-box
when it shares a family with one of them, black-box otherwise.
"""
from .cache import StageCache, content_hash
from .models import ModelStore, threat_model
from .run import run_matrix, stealth_metrics
from .spec import ZERO_SHOT, CountermeasureSpec, DefenseSpec, MatrixError, MatrixSpec, MetricSpec, load_spec
from .stages import Stages, peak_memory_mib

__all__ = ["ZERO_SHOT", "MatrixSpec", "DefenseSpec", "CountermeasureSpec", "MetricSpec", "run_matrix", "threat_model",
           "peak_memory_mib", "load_spec", "MatrixError", "Stages", "ModelStore", "StageCache", "content_hash",
           "stealth_metrics"]
