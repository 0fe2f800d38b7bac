"""toolkit.attention: the attention-mass loss, attention rows, alignment of clean to protected rows."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.attention import align_to_protected, attention_rows, mass_loss


def test_l_mass_hand_computed():
    att = torch.zeros(1, 2, 3, 3)
    att[0, 0, 2] = torch.tensor([0.5, 0.25, 0.25])
    att[0, 1, 2] = torch.tensor([0.5, 0.25, 0.25])
    layer2 = torch.zeros(1, 1, 3, 3)
    layer2[0, 0, 2] = torch.tensor([0.1, 0.1, 0.8])
    source = torch.tensor([[False, False, True]])
    target = torch.tensor([[True, True, False]])
    # layer 1: KL(U_{0,1} || [.5,.25,.25]) = .5 log(.5/.5) + .5 log(.5/.25) = .5 log 2
    # layer 2: .5 log(.5/.1) * 2 = log 5
    expected = (0.5 * math.log(2) + math.log(5)) / 2
    assert mass_loss([att, layer2], source, target).item() == pytest.approx(expected, rel=1e-5)
    # uniform attention over R gives 0
    uni = torch.zeros(1, 1, 3, 3)
    uni[0, 0, 2] = torch.tensor([0.5, 0.5, 0.0])
    assert mass_loss([uni], source, target).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_rows_average_heads_and_sources():
    att = torch.rand(2, 3, 4, 4).softmax(-1)
    source = torch.tensor([[True, False, True, False], [False, False, False, True]])
    rows = attention_rows(att, source)
    assert torch.allclose(rows[0], att[0].mean(0)[[0, 2]].mean(0), atol=1e-6)
    assert torch.allclose(rows[1], att[1].mean(0)[3], atol=1e-6)
    assert torch.allclose(rows.sum(1), torch.ones(2), atol=1e-5)


def test_align_zero_pads_trigger_positions():
    clean = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    c_ids = torch.tensor([[1, 2, 3, 4]])
    p_ids = torch.tensor([[1, 9, 9, 2, 3, 4, 0]])  # trigger at 1-2, one pad
    valid_c = torch.ones(1, 4, dtype=torch.bool)
    valid_p = torch.tensor([[True] * 6 + [False]])
    trig = torch.tensor([[False, True, True, False, False, False, False]])
    out = align_to_protected(clean, c_ids, valid_c, p_ids, valid_p, trig)
    assert torch.allclose(out, torch.tensor([[0.1, 0.0, 0.0, 0.2, 0.3, 0.4, 0.0]]))
    # a token re-tokenised next to the trigger (2 -> 7) still maps in order
    p_ids2 = torch.tensor([[1, 9, 9, 7, 3, 4, 0]])
    out2 = align_to_protected(clean, c_ids, valid_c, p_ids2, valid_p, trig)
    assert torch.allclose(out2, out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=12), st.data())
def test_align_places_clean_rows_around_an_inserted_trigger(clean_ids, data):
    """Protected = clean with a trigger block inserted anywhere (and right padding): every clean weight lands on
    its own token, trigger positions get zero (the exact case of the alignment)."""
    from toolkit.attention import align_unpadded_to_protected

    at = data.draw(st.integers(0, len(clean_ids)))
    block = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    pad = data.draw(st.integers(0, 3))
    prot = clean_ids[:at] + block + clean_ids[at:]
    ids = torch.tensor([prot + [0] * pad])
    valid = torch.tensor([[True] * len(prot) + [False] * pad])
    trig = torch.tensor([[False] * at + [True] * len(block) + [False] * (len(clean_ids) - at + pad)])
    src = torch.rand(len(clean_ids), dtype=torch.float64)
    out = align_unpadded_to_protected([(src, clean_ids)], ids, valid, trig)[0]
    assert torch.equal(out[~trig[0] & valid[0]], src) and not out[trig[0] | ~valid[0]].any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=10), st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1,
                                                          max_size=10))
def test_align_never_invents_or_duplicates_mass(clean_ids, prot):
    """Any clean / protected pair (tokens merged or split next to the trigger): nothing lands on a trigger
    position, and the aligned row carries at most the clean row's mass (each clean weight goes to one place
    or, with no non-trigger token in between to take it, is dropped)."""
    from toolkit.attention import align_unpadded_to_protected

    ids = torch.tensor([[p for p, _ in prot]])
    trig = torch.tensor([[t for _, t in prot]])
    valid = torch.ones_like(trig)
    src = torch.rand(len(clean_ids), dtype=torch.float64)
    out = align_unpadded_to_protected([(src, clean_ids)], ids, valid, trig)[0]
    assert not out[trig[0]].any() and (out >= 0).all()
    assert out.sum() <= src.sum() + 1e-12
