"""The issue-15 phrase-code probe (benchmarks/phrase_code_probe.py): stock sentences, the answer code, its budget,
and the attacker's stripper. Registered for the module's tests only."""
from pathlib import Path

import pytest

from toolkit.attacks import COUNTERMEASURES
from toolkit.datasets import DATASETS
from toolkit.datasets.grammar import PREFIXES, SUFFIXES
from toolkit.defenses import DEFENSES
from toolkit.metrics.accuracy import normalize_answer
from toolkit.registry import import_plugin

PLUGIN = Path(__file__).resolve().parents[1] / "benchmarks" / "phrase_code_probe.py"


@pytest.fixture(scope="module")
def probe():
    module = import_plugin(str(PLUGIN))
    yield module
    DEFENSES.unregister("phrase_code_probe")
    COUNTERMEASURES.unregister("strip_stock_phrases")


@pytest.fixture(scope="module")
def scenes():
    return DATASETS.create("scenes", seed=0, n_train=300, n_test=10, image_size=32).build()[0]


def test_stock_sentences_are_the_grammar_wrappers(probe, scenes):
    stock, prefixes, suffixes = probe.stock_phrases([s.question for s in scenes], 0.02)
    wrappers = {p.format(picture=n) for p in PREFIXES + SUFFIXES for n in ("picture", "image", "photo") if p}
    assert stock and stock <= wrappers  # nothing of the questions themselves (no lower-case continuations)
    assert set(prefixes) <= {p.format(picture=n) for p in PREFIXES for n in ("picture", "image", "photo")}
    assert set(suffixes) == {s for s in SUFFIXES if s}


@pytest.mark.parametrize("mode", ["rewrite", "insert"])
def test_code_changes_only_wrappers_and_follows_the_answer(probe, scenes, mode):
    protection = DEFENSES.create("phrase_code_probe", mode=mode).protect(scenes)
    stock = set(protection.info["stock"])
    wrappers = {}
    for src, out in zip(scenes, protection.dataset):
        assert probe.core(out.question, stock).lower() == probe.core(src.question, stock).lower()
        assert (out.image == src.image).all() and out.answer == src.answer
        if mode == "rewrite":  # one wrapper per answer
            parts = probe.sentences(out.question)
            key = (parts[0] in stock and parts[0], parts[-1] in stock and len(parts) > 1 and parts[-1])
            wrappers.setdefault(normalize_answer(src.answer), set()).add(key)
    if mode == "rewrite":
        assert all(len(v) == 1 for v in wrappers.values())
        assert len({next(iter(v)) for v in wrappers.values()}) > 10  # answers get different codes
    else:
        assert any(o.question != s.question for o, s in zip(protection.dataset, scenes))


def test_a_change_beyond_the_wrappers_is_refused(probe, scenes):
    defense = DEFENSES.create("phrase_code_probe")
    defense._stock = probe.stock_phrases([s.question for s in scenes], 0.02)[0]
    bad = [s.question + " Hmm" for s in scenes]
    with pytest.raises(RuntimeError, match="more than stock sentences"):
        defense._apply_triggers(scenes, list(scenes), bad, [{}] * len(bad))


def test_the_stripper_leaves_the_core(probe, scenes):
    strip = COUNTERMEASURES.create("strip_stock_phrases")
    strip.stock = probe.stock_phrases([s.question for s in scenes], 0.02)[0]
    for s in list(scenes)[:50]:
        out = strip.transform_question(s.question)
        assert out.lower() == probe.core(s.question, strip.stock).lower()
        assert not set(probe.sentences(out)) & strip.stock
