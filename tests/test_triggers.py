"""toolkit.triggers: insertion, the admissible vocabulary and its exclusions, HotFlip scores."""
import pytest
import torch

from toolkit.triggers import admissible_vocabulary, hotflip_scores, insert_trigger


def test_insert_trigger_positions():
    q = "What digit is shown?"
    assert insert_trigger(q, ["zebra", "lamp"], "start")[0] == "zebra lamp What digit is shown?"
    assert insert_trigger(q, ["zebra"], "end")[0] == "What digit is shown? zebra"
    text, span, words = insert_trigger(q, ["zebra"], 2)
    assert text == "What digit zebra is shown?" and text[span[0]:span[1]] == "zebra"
    assert insert_trigger(q, [], "start") == (q, None, [])
    with pytest.raises(ValueError, match="inadmissible"):
        insert_trigger(q, ["ze3ra"], "start")
    with pytest.raises(ValueError, match="position"):
        insert_trigger(q, ["zebra"], "middle")


def test_admissible_vocabulary_excludes_special_digits_punctuation(llava):
    vocab = admissible_vocabulary(llava.tokenizer)
    assert len(vocab) > 20
    for tid, word in zip(vocab.ids.tolist(), vocab.words):
        assert llava.tokenizer.decode([tid]) == " " + word and word.isalpha() and word.isascii()
        assert tid not in llava.tokenizer.all_special_ids


def test_hotflip_scores_first_order():
    emb = torch.randn(6, 4)
    from toolkit.triggers import Vocabulary
    vocab = Vocabulary(torch.tensor([1, 3, 5]), ("a", "b", "c"))
    grad, current = torch.randn(2, 4), emb[[0, 2]]
    scores = hotflip_scores(grad, current, emb, vocab)
    expected = torch.stack([(emb[[1, 3, 5]] - current[i]) @ grad[i] for i in range(2)])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_vocabulary_exclusions(llava):
    from toolkit.triggers import Vocabulary

    vocab = llava.trigger_vocabulary()
    assert "ASSISTANT" not in vocab.words and "USER" not in vocab.words
    small = Vocabulary(torch.tensor([1, 2, 3]), ("Seven", "lamp", "zebra"))
    assert small.without({"seven"}).words == ("lamp", "zebra")
    with pytest.raises(ValueError, match="excluded"):
        small.without({"seven", "LAMP", "zebra"})


def _split_words(surrogate, released, shape):
    """Trigger words of the released questions that do not re-tokenise to exactly one token in place."""
    bad = []
    for s in released:
        trig = s.meta["trigger"]
        _, _, spans = insert_trigger(s.meta["source_question"], trig["words"], trig["position"])
        counts = surrogate.trigger_token_mask(shape, [s] * len(spans), spans).sum(1).tolist()
        bad += [w for w, c in zip(trig["words"], counts) if c != 1]
    return bad


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_inserted_trigger_words_are_one_token_each_in_place(family, digits_small, tmp_path):
    """eps_t counts tokens: every released trigger word is exactly one token of the surrogate where it was
    inserted, at every position; the old rule (words only) splits some at the start of the turn."""
    from toolkit import DEFENSES
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny import build_tiny

    surrogate = load_surrogate(build_tiny(family, tmp_path / family, seed=0))
    data = digits_small[0][:12]
    shape = tuple(data[0].image.shape[:2])
    fast = dict(rounds=1, train_steps=1, pgd_steps=0, batch_size=12, pgd_batch_size=12, eval_size=4,
                max_trigger_tokens=5, trigger_candidates=8, trigger_rounds=1)
    splits_before = 0
    for position in ("start", 2, "end"):
        for single in (True, False):
            out = DEFENSES.create("mem", trigger_position=position, single_token_words=single, **fast).protect(
                data, [surrogate])
            released = [p.with_(meta={**p.meta, "source_question": s.question}) for p, s in zip(out.dataset, data)]
            bad = _split_words(surrogate, released, shape)
            if single:
                assert bad == [], (position, bad)
                assert out.info["history"][0]["trigger_rejected"] >= 0
            elif position == "start":
                splits_before = len(bad)
    assert splits_before > 0  # the control: without the rule, start triggers spend more tokens than words
