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
