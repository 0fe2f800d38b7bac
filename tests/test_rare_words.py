"""The attacker's 'drop rare words' countermeasure (fitted on its own clean questions)."""
import pytest

from toolkit.attacks import COUNTERMEASURES, DropRareWords
from toolkit.data import VQADataset, VQASample

import numpy as np

CLEAN = ["What colour is the cube?", "Which shape is red?", "How many objects are there?", "What colour is it?"]


def _sample(q, i=0):
    return VQASample(id=f"s{i}", image=np.zeros((8, 8, 3), np.uint8), question=q, answer="red")


def test_drops_words_the_clean_questions_never_use():
    f = DropRareWords().fit(CLEAN)
    assert f.transform_question("zebra quartz What colour is the cube?") == "What colour is the cube?"
    assert f.transform_question("What Colour is the SHAPE?") == "What Colour is the SHAPE?"  # case, punctuation
    assert f.transform_question("What colour is the cube ?") == "What colour is the cube ?"  # punctuation stays
    out = f(VQADataset([_sample("zebra Which shape is red?")], name="d"))
    assert out[0].question == "Which shape is red?" and out[0].answer == "red"


def test_min_count_and_cap():
    f = DropRareWords(min_count=2).fit(CLEAN)
    assert f.transform_question("What colour is the cube?") == "What colour is"  # "the", "cube" seen once
    capped = DropRareWords(max_removed=1).fit(CLEAN)
    assert capped.transform_question("zebra quartz What colour is it?") == "quartz What colour is it?"
    assert DropRareWords().fit(CLEAN).transform_question("zebra quartz") == "zebra quartz"  # never emptied


def test_needs_fit_and_validates():
    with pytest.raises(RuntimeError, match="not fitted"):
        DropRareWords().transform_question("What colour?")
    with pytest.raises(ValueError, match="clean question"):
        DropRareWords().fit([])
    with pytest.raises(ValueError, match="min_count"):
        DropRareWords(min_count=0)
    chain = COUNTERMEASURES.create("jpeg+drop_rare_words", jpeg={"quality": 10})
    assert [m.needs_fit for m in chain.members()] == [False, True]
