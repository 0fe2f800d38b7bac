import numpy as np
import pytest
import torch

from toolkit import COUNTERMEASURES
from toolkit.attacks import TriggerFilter
from toolkit.data import VQADataset, VQASample


class OddWordScorer:
    """A stand-in LM: natural words cost 1 nat, the unnatural word 'zebrafy' costs 6."""

    def text_nll(self, texts):
        out = []
        for t in texts:
            words = t.split() or [""]
            out.append(np.mean([6.0 if w == "zebrafy" else 1.0 + 0.01 * len(w) for w in words]))
        return torch.tensor(out)


CLEAN = ["What digit is this?", "Which number is shown in the picture?", "What is written on the sign?",
         "How many people are in the image?"]


def test_filter_removes_inserted_trigger_and_keeps_clean_text():
    tf = COUNTERMEASURES.create("trigger_filter", quantile=1.0).fit(OddWordScorer(), CLEAN)
    assert tf.filter("zebrafy What digit is this?") == "What digit is this?"
    assert tf.filter("What digit zebrafy is this?") == "What digit is this?"
    for q in CLEAN:
        assert tf.filter(q) == q
    ds = VQADataset([VQASample("a", np.zeros((4, 4, 3), np.uint8), "zebrafy What digit is this?", "seven")])
    assert tf(ds)[0].question == "What digit is this?" and tf(ds)[0].answer == "seven"


def test_filter_needs_fit():
    tf = COUNTERMEASURES.create("trigger_filter")
    with pytest.raises(RuntimeError, match="fit"):
        tf.filter("a b c")


def test_victim_language_model_scores_text(llava):
    nll = llava.text_nll(["What digit is this?", "zebra the of of of"])
    assert nll.shape == (2,) and torch.isfinite(nll).all() and (nll > 0).all()
    tf = COUNTERMEASURES.create("trigger_filter", quantile=0.9).fit(llava, CLEAN)
    assert tf.fitted_threshold is not None and isinstance(tf.filter("What digit is this?"), str)


def test_ngram_scorer_filter_strips_an_inserted_trigger():
    from toolkit.surrogates.ngram import NgramLM
    from toolkit.triggers import insert_trigger

    clean = ["What digit is this?", "What digit is this ?", "what digit is this?"]
    lm = NgramLM().fit(clean)
    nll = lm.text_nll(["What digit is this?", "zebra What digit is this?"])
    assert nll[1] > nll[0]  # an unseen word raises perplexity
    f = TriggerFilter(quantile=1.0).fit(lm, clean)
    question, _, _ = insert_trigger("What digit is this?", ["zebra", "quartz"], "start")
    assert f.filter(question) == "What digit is this?"
    assert f.filter("What digit is this?") == "What digit is this?"
    with pytest.raises(RuntimeError, match="fit"):
        NgramLM().text_nll(["x"])


def test_trigger_removal_share_counts_removed_trigger_words():
    from toolkit.data import VQADataset, VQASample
    from toolkit.metrics import trigger_removal

    img = np.zeros((4, 4, 3), np.uint8)
    released = VQADataset([VQASample("a", img, "zebra quartz What?", "x", meta={"trigger": {"words": ["zebra", "quartz"]}}),
                           VQASample("b", img, "What?", "x")])
    filtered = released.replace_samples([released[0].with_(question="quartz What?"), released[1]])
    assert trigger_removal(released, filtered) == {"trigger_removed": 0.5}
    assert trigger_removal(filtered.replace_samples([released[1]]), filtered) == {}
