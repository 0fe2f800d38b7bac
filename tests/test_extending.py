"""Adding a fitted countermeasure or a metric touches only the new class: the matrix runner knows neither by name."""
from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest

from toolkit.attacks import COUNTERMEASURES, Transform
from toolkit.matrix import MatrixError, MatrixSpec, Stages, run_matrix
from toolkit.metrics import METRICS, Metric
from toolkit.registry import Config


class ClipToAttackerRange(Transform):
    """Clip every pixel into the attacker's clean images' range, widened by ``fit.margin`` grey levels."""

    needs_fit = True
    fit_keys = frozenset({"margin"})

    @dataclass(frozen=True, kw_only=True)
    class Config(Config):
        pass

    @classmethod
    def check_fit(cls, fit, models, defenses):
        if not isinstance(fit.get("margin", 0), int):
            raise ValueError(f"margin: an integer, got {fit['margin']!r}")

    def fit_from(self, ctx):
        images = np.stack([s.image for s in ctx.clean_data()])
        margin = ctx.fit.get("margin", 0)
        self.low, self.high = max(0, int(images.min()) + margin), min(255, int(images.max()) - margin)
        return {"fitted_low": self.low, "fitted_high": self.high}

    def transform_image(self, image, rng):
        return np.clip(image, self.low, self.high).astype(np.uint8)


class QuestionWords(Metric):
    """Mean number of words per released question."""

    kind = "text"

    def __call__(self, clean, released):
        return float(np.mean([len(s.question.split()) for s in released]))


@pytest.fixture(autouse=True)
def registered():
    """Register the two user classes for one test only (other tests see the package's registries unchanged)."""
    COUNTERMEASURES.register("test_clip_to_attacker_range")(ClipToAttackerRange)
    METRICS.register("test_question_words")(QuestionWords)
    yield
    COUNTERMEASURES.unregister("test_clip_to_attacker_range")
    METRICS.unregister("test_question_words")


def _spec(fit):
    return {"name": "ext", "data": {"source": "digits", "image_size": 32, "limit": 30, "attacker_clean": 6},
            "models": {"v": {"tiny": "llava", "seed": 1}},
            "defenses": [{"name": "random_noise", "config": {"eps": 0.1}}],
            "countermeasures": [{"label": "clip", "name": "test_clip_to_attacker_range", "fit": fit}],
            "victims": ["v"], "metrics": ["accuracy", "psnr", "test_question_words"],
            "finetune": {"mode": "full", "epochs": 1, "batch_size": 16}, "seeds": [0]}


def test_a_fitted_countermeasure_and_a_metric_from_outside_run_in_a_matrix(tmp_path):
    rows = run_matrix(_spec({"margin": 40}), tmp_path, progress=False)
    clipped = [r for r in rows if r["countermeasure"] == "clip"]
    assert len(clipped) == 2 and all(r["error"] is None for r in rows)
    # the fit saw the attacker's clean images (digits span 0..255) and reported through the row
    assert all((r["fitted_low"], r["fitted_high"]) == (40, 215) for r in clipped)
    assert all(r["test_question_words"] == 4.0 for r in rows)  # "What digit is this?"
    header = next(csv.reader(open(tmp_path / "results.csv")))
    assert "test_question_words" in header
    # the fit entries are part of the cache key: in the same cache, another margin is another transform
    again = run_matrix(_spec({"margin": 20}), tmp_path / "b", progress=False, cache=tmp_path / "cache")
    assert all(r["fitted_low"] == 20 for r in again if r["countermeasure"] == "clip")


def test_fit_entries_are_validated_by_the_countermeasure():
    with pytest.raises(MatrixError, match=r"countermeasures\[0\]\.fit\.margin: an integer"):
        MatrixSpec.from_dict(_spec({"margin": "wide"}))
    with pytest.raises(MatrixError, match=r"fit: unknown keys \['scorer'\]"):
        MatrixSpec.from_dict(_spec({"scorer": "ngram"}))


def test_fit_identities_keep_the_cache_keys_of_earlier_releases(tmp_path):
    """The transform cache key's fit part, as the runner built it before countermeasures fitted themselves."""
    spec = MatrixSpec.from_dict({
        "data": {"source": "digits", "image_size": 32, "limit": 30, "attacker_clean": 6},
        "models": {"s": {"tiny": "llava", "seed": 0}, "v": {"tiny": "llava", "seed": 1}},
        "defenses": [{"label": "emn", "name": "emn", "surrogates": ["s"], "weights": [1.0]}],
        "countermeasures": [{"label": "f", "name": "trigger_filter", "fit": {"scorer": "v"}},
                            {"label": "ls", "name": "lightshed", "fit": {"runs": 2}},
                            {"label": "j", "name": "jpeg"}],
        "victims": ["v"]})
    stages = Stages(spec, tmp_path)
    emn = spec.defenses[1]
    cms = {c.label: c for c in spec.countermeasures}
    assert stages.fit_identity(cms["j"], emn, 0) == {}
    assert stages.fit_identity(cms["f"], emn, 0) == {"fit": {"scorer": "v"}, "attacker_clean": 6,
                                                     "scorer": {"tiny": {"tiny": "llava", "seed": 1}}}
    assert stages.fit_identity(cms["ls"], emn, 0) == {
        "fit": {"runs": 2}, "attacker_clean": 6, "defense": ["emn", {}, (1.0,)],
        "surrogates": [{"tiny": {"tiny": "llava", "seed": 0}}]}


def test_training_side_countermeasures_do_not_chain():
    with pytest.raises(TypeError, match="cannot be chained"):
        COUNTERMEASURES.create("jpeg+adversarial_training")
