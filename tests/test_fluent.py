"""Fluency-aware trigger search (issue 15): options off = the plain search, the defender's own filter, the
leakage guard, no repeated words, natural insertion, and lower defender-LM NLL than the plain search."""
import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.datasets import DATASETS
from toolkit.defenses.minmin import TriggerRules
from toolkit.surrogates.ngram import NgramLM
from toolkit.triggers import Vocabulary, insert_trigger, leaks, words_of

TINY = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 4, "pgd_batch_size": 12, "eval_size": 4,
        "max_trigger_tokens": 3, "trigger_candidates": 4}
OFF = {"lambda_flu": 0.0, "fluency_scorer": "ngram", "filter_aware": False, "filter_quantile": 0.95,
       "trigger_vocabulary": "admissible", "no_repeated_words": False, "leakage_guard": False}


@pytest.fixture(scope="module")
def worded(digits_small):
    """24 digit images asked with the scene task's varied questions (a question vocabulary worth fitting an
    n-gram LM on; digits alone have one question)."""
    train = digits_small[0]
    scenes, _ = DATASETS.create("scenes", n_train=40, n_test=4, image_size=32, seed=0).build()
    return train.replace_samples([s.with_(question=q.question) for s, q in zip(list(train)[:24], scenes)])


def _nll_of(texts, clean):
    return NgramLM().fit(clean).text_nll(texts).mean().item()


def _flagged(lm, threshold, question, indices):
    """The attacker's ONION test recomputed here: leave-one-word-out drop of the mean NLL above threshold."""
    words = question.split()
    full = lm.text_nll([question])[0].item()
    return [full - lm.text_nll([" ".join(words[:j] + words[j + 1:])])[0].item() > threshold for j in indices]


@pytest.mark.parametrize("name", ["mmguard_bph", "mem"])
def test_options_off_reproduce_the_plain_search_bit_for_bit(name, digits_small, llava):
    data = digits_small[0][:8]
    extra = {"trigger_rounds": 1} if name == "mem" else {}
    plain = DEFENSES.create(name, **TINY, **extra).protect(data, [llava])
    explicit = DEFENSES.create(name, **TINY, **extra, **OFF).protect(data, [llava])
    for a, b in zip(plain.dataset, explicit.dataset):
        assert a.question == b.question and np.array_equal(a.image, b.image)
        assert a.meta["trigger"] == b.meta["trigger"]


def test_rules_path_with_everything_off_changes_nothing(digits_small, llava):
    """The fluency code path of the search (rules present, lambda_flu = 0, no filter) picks the same words."""
    data = digits_small[0][:8]
    defense = DEFENSES.create("mmguard_bph", **TINY)
    runs = [defense.begin(data, [llava]) for _ in range(2)]
    runs[1].pert.rules = TriggerRules(defense.config, runs[1].pert, [llava])
    with llava.frozen():
        for run in runs:
            defense.trigger_pass(run, torch.arange(len(data)), 4, batch_size=16)
            run.new_step()
    assert runs[0].pert.triggers == runs[1].pert.triggers
    assert runs[0].pert.triggers != [list(t) for t in defense.begin(data, [llava]).pert.triggers]  # it searched


def test_filter_aware_triggers_pass_the_defenders_own_filter(worded, llava):
    cfg = {**TINY, "filter_quantile": 0.95}
    out = DEFENSES.create("mmguard_bph_fluent", **cfg).protect(worded, [llava])
    clean = [s.question for s in worded]
    lm = NgramLM().fit(clean)
    scores = []
    for q in clean:
        w = q.split()
        scores += [lm.text_nll([q])[0].item() - lm.text_nll([" ".join(w[:j] + w[j + 1:])])[0].item()
                   for j in range(len(w))]
    threshold = max(0.0, float(np.quantile(scores, 0.95)))
    with_trigger = 0
    for s in out.dataset:
        trig = s.meta["trigger"]
        if not trig["words"]:
            continue
        with_trigger += 1
        first = len(s.question[:trig["span"][0]].split())
        assert not any(_flagged(lm, threshold, s.question, range(first, first + len(trig["words"])))), s.question
    assert with_trigger >= 3  # few fit: 24 questions make a peaked bigram LM (4 here)
    # the plain search's triggers are flagged by the same test (so the check above can fail)
    plain = DEFENSES.create("mmguard_bph", **TINY).protect(worded, [llava])
    flagged = [any(_flagged(lm, threshold, s.question, range(len(s.meta["trigger"]["words"])))) for s in plain.dataset]
    assert np.mean(flagged) > 0.9


def test_leakage_guard_rejects_fragments_of_answers_and_template_words(digits_small, llava):
    assert leaks("cam", {"camera"}) and leaks("assistan", {"ASSISTANT"}) and leaks("CIRCLES", {"circle"})
    assert not leaks("cat", {"camera"}) and not leaks("the", {"ASSISTANT"})
    vocab = Vocabulary(torch.tensor([0, 1, 2]), ("cam", "cat", "door"))
    assert vocab.without({"camera"}).words == ("cam", "cat", "door")
    assert vocab.without({"camera"}, guard=True).words == ("cat", "door")
    data = digits_small[0][:4]
    pert = DEFENSES.create("mmguard_bph", **TINY).begin(data, [llava]).pert
    assert "ASSISTAN" in llava.trigger_vocabulary().words  # the tiny tokenizer has the fragment
    for guard in (False, True):
        cfg = DEFENSES.create("mmguard_bph", **TINY, leakage_guard=guard).config
        words = set(TriggerRules(cfg, pert, [llava]).vocabularies(llava)[0].words)
        assert ("ASSISTAN" in words) != guard and ("ASS" in words) != guard
        assert not {"seven", "three"} & words  # answers are banned either way


@pytest.mark.parametrize("name", ["mmguard_crs_fluent", "mem"])
def test_no_repeated_words_and_natural_positions(name, digits_small, llava):
    data = digits_small[0][:10]
    extra = {"trigger_rounds": 1, "no_repeated_words": True, "trigger_position": "natural",
             "trigger_vocabulary": "both"} if name == "mem" else {"filter_aware": False}
    out = DEFENSES.create(name, **TINY, **extra).protect(data, [llava])
    plain = DEFENSES.create("mmguard_bph", **TINY).protect(data, [llava])
    assert any(len({w.lower() for w in s.meta["trigger"]["words"]}) < 3 for s in plain.dataset)  # it does repeat
    positions = set()
    for src, s in zip(data, out.dataset):
        words = [w.lower() for w in s.meta["trigger"]["words"]]
        assert len(words) == 3 and len(set(words)) == 3
        assert not set(words) & {w.lower() for w in words_of(src.question)}
        pos = s.meta["trigger"]["position"]
        assert isinstance(pos, int) and insert_trigger(src.question, s.meta["trigger"]["words"], pos)[0] == s.question
        positions.add(pos)
    assert len(positions) > 1 or positions != {0}  # placed by the LM, not always at the start


def test_fluent_triggers_have_lower_defender_nll(worded, llava):
    data = worded.replace_samples(list(worded)[:12])
    clean = [s.question for s in data]
    fluent = DEFENSES.create("mmguard_bph_fluent", **TINY, filter_aware=False).protect(data, [llava])
    unweighted = DEFENSES.create("mmguard_bph_fluent", **TINY, filter_aware=False, lambda_flu=0.0).protect(data, [llava])
    plain = DEFENSES.create("mmguard_bph", **TINY).protect(data, [llava])
    nll = {k: _nll_of([s.question for s in out.dataset], clean)
           for k, out in (("fluent", fluent), ("unweighted", unweighted), ("plain", plain))}
    assert nll["fluent"] < nll["unweighted"] < nll["plain"], nll


def test_config_checks():
    with pytest.raises(ValueError, match="trigger_vocabulary"):
        DEFENSES.create("mmguard_bph", trigger_vocabulary="all")
    with pytest.raises(ValueError, match="fluency_scorer"):
        DEFENSES.create("mem", fluency_scorer="gpt")
    with pytest.raises(ValueError, match="trigger position"):
        DEFENSES.create("mmguard_crs", trigger_position="middle")
    cfg = DEFENSES.create("mmguard_crs_fluent").config
    assert cfg.fluent_search and cfg.trigger_position == "natural" and cfg.lambda_flu == 1.0 and cfg.filter_aware
    assert not DEFENSES.create("mmguard_crs").config.fluent_search
