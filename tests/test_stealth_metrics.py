"""Stealth metrics of the MMGuard paper: question character edit distance, BLEU, perplexity (n-gram cross-fitted
and a user's LM), LPIPS from local weights, and their ``metrics:`` entries in a matrix spec."""
import math

import numpy as np
import pytest
import torch

from toolkit.data import VQASample
from toolkit.matrix import MatrixError, MatrixSpec, MetricSpec, load_spec, stealth_metrics
from toolkit.metrics import METRICS, crossfit_ngram_perplexity, lm_perplexity, question_bleu

IMAGE = np.zeros((4, 4, 3), np.uint8)


def _sets(clean_questions, released_questions):
    clean = [VQASample(f"q{i}", IMAGE, q, "x") for i, q in enumerate(clean_questions)]
    released = [VQASample(f"q{i}", IMAGE, q, "x") for i, q in enumerate(released_questions)]
    return clean, released


# --- character edit distance -------------------------------------------------------------------------------------

def test_char_edit_distance_by_hand():
    clean, released = _sets(["What colour is it?", "abc"], ["What red colour is it?", "abd"])
    # "red " inserted: 4 characters; c -> d: 1 substitution
    assert METRICS.create("question_char_edit_distance")(clean, released) == pytest.approx((4 + 1) / 2)
    assert METRICS.create("question_char_edit_distance")(clean, clean) == 0.0


# --- BLEU --------------------------------------------------------------------------------------------------------

def test_bleu_identical_is_100_even_for_short_questions():
    qs = ["What?", "Is it red?", "How many dogs are in the picture?"]
    clean, _ = _sets(qs, qs)
    assert METRICS.create("question_bleu")(clean, clean) == pytest.approx(100.0)
    assert question_bleu(["What?"], ["What?"]) == pytest.approx(100.0)
    assert question_bleu(qs, qs, level="sentence") == pytest.approx(100.0)


def test_bleu_by_hand():
    # 13a tokens: hyp "what red colour is the car ?" (7) vs ref "what colour is the car ?" (6); no brevity penalty.
    # matches: 1-grams 6/7, 2-grams 4/6, 3-grams 3/5, 4-grams 2/4
    expected = 100 * (6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert question_bleu(["what red colour is the car?"], ["what colour is the car?"]) == pytest.approx(expected)
    # released shorter: every n-gram matches, brevity penalty exp(1 - 6/4)
    assert question_bleu(["what colour is the"], ["what colour is the car?"]) == pytest.approx(100 * math.exp(-0.5))
    # 'exp' smoothing: the unmatched bigram counts as 1/(2*1); sqrt(1/2 * 1/2)
    assert question_bleu(["a b"], ["a c"]) == pytest.approx(50.0)


def test_bleu_config_is_validated():
    with pytest.raises(ValueError, match="level"):
        METRICS.create("question_bleu", level="paragraph")
    with pytest.raises(ValueError, match="tokenize"):
        METRICS.create("question_bleu", tokenize="spm")  # would download a SentencePiece model


# --- n-gram perplexity, cross-fitted ------------------------------------------------------------------------------

def test_crossfit_scores_each_question_without_itself():
    # disjoint vocabularies: under cross-fitting every word of a scored question is unknown.
    # Leave-one-out bigram, k=0.1, vocab 4 words + </s> + <unk> = 6 slots:
    # P(<unk>|<s>) = 0.1 / (2 + 0.6) = 1/26, P(<unk>|<unk>) = P(</s>|<unk>) = 0.1 / 0.6 = 1/6
    clean = ["alpha beta", "gamma delta", "epsilon zeta"]
    released = ["alpha red beta", "gamma red delta", "epsilon red zeta"]
    ppl_clean, ppl_released = crossfit_ngram_perplexity(clean, released, folds=3, order=2, k=0.1)
    assert ppl_clean == pytest.approx((26 * 6 * 6) ** (1 / 3))  # a question scored by itself would be far lower
    assert ppl_released == pytest.approx((26 * 6 * 6 * 6) ** (1 / 4))  # one more <unk>|<unk> token


def test_ngram_perplexity_metrics_clean_vs_released():
    objects = ["car", "dog", "cup", "hat", "box", "pen", "bag", "sky"]
    clean_q = [f"what colour is the {o} ?" for o in objects]
    released_q = [f"what colour cf zq is the {o} ?" for o in objects]
    clean, released = _sets(clean_q, released_q)
    ppl = METRICS.create("question_perplexity")(clean, released)
    base = METRICS.create("question_perplexity_clean")(clean, released)
    assert ppl > base > 1.0
    assert METRICS.create("question_perplexity")(clean, clean) == pytest.approx(base)
    with pytest.raises(ValueError, match="folds"):
        METRICS.create("question_perplexity", folds=1)
    with pytest.raises(ValueError, match="at least 2"):
        crossfit_ngram_perplexity(["one"], ["one"])


# --- a user's language model ---------------------------------------------------------------------------------------

class _FakeLM:
    """text_nll = 0.5 nats per word (per-question mean NLL, as the surrogates return)."""

    def __init__(self):
        self.calls = 0

    def text_nll(self, texts):
        self.calls += 1
        return torch.tensor([0.5 * len(t.split()) for t in texts], dtype=torch.float64)


def test_lm_perplexity_is_exp_of_mean_nll():
    assert lm_perplexity(_FakeLM(), ["a b", "a b c d"]) == pytest.approx(math.exp((1.0 + 2.0) / 2))
    clean, released = _sets(["a b", "c d"], ["a x b", "c x d"])
    lm = _FakeLM()
    assert METRICS.create("question_perplexity_lm", scorer=lm)(clean, released) == pytest.approx(math.exp(1.5))
    assert METRICS.create("question_perplexity_lm_clean", scorer=lm)(clean, released) == pytest.approx(math.exp(1.0))
    with pytest.raises(RuntimeError, match="model: MODEL_KEY"):
        METRICS.create("question_perplexity_lm")(clean, released)


def test_stealth_metrics_load_a_metric_model_once():
    clean, released = _sets(["a b", "c d"], ["a x b", "c x d"])
    loaded = []

    def load(key):
        loaded.append(key)
        return _FakeLM()

    entries = [MetricSpec("question_perplexity_lm", {}, "lm"), MetricSpec("question_perplexity_lm_clean", {}, "lm"),
               "question_char_edit_distance"]
    cache = {}
    for _ in range(2):
        out = stealth_metrics(clean, released, entries, load, cache)
    assert loaded == ["lm"]
    assert out == {"question_perplexity_lm": pytest.approx(math.exp(1.5)),
                   "question_perplexity_lm_clean": pytest.approx(math.exp(1.0)),
                   "question_char_edit_distance": 2.0}


# --- LPIPS --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A random-init torchvision AlexNet state_dict on disk (stands in for the user's pretrained file)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def _image_pairs(sigma, size=32, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    noisy = np.clip(src.astype(float) + rng.normal(0, sigma, src.shape), 0, 255).astype(np.uint8)
    return [VQASample("a", src, "q", "x")], [VQASample("a", noisy, "q", "x")]


def test_lpips_zero_for_identical_and_growing_with_noise(alexnet_file):
    metric = METRICS.create("lpips", backbone=str(alexnet_file))
    clean, _ = _image_pairs(0)
    assert metric(clean, clean) == pytest.approx(0.0, abs=1e-7)
    values = [metric(*_image_pairs(sigma)) for sigma in (2, 8, 32)]  # 32 px images, upsampled to 64
    assert 0 < values[0] < values[1] < values[2]
    assert METRICS.create("lpips", backbone=str(alexnet_file), min_size=32)(*_image_pairs(8)) > 0  # AlexNet at 32 px


def test_lpips_uses_the_given_backbone(alexnet_file, tmp_path):
    import torchvision

    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), other)
    pair = _image_pairs(16)
    assert METRICS.create("lpips", backbone=str(alexnet_file))(*pair) != \
        pytest.approx(METRICS.create("lpips", backbone=str(other))(*pair))


def test_lpips_without_weights_says_what_to_give(tmp_path):
    with pytest.raises(ValueError, match=r"backbone: not given.*torchvision alexnet state_dict.*config: \{backbone"):
        METRICS.create("lpips")
    with pytest.raises(ValueError, match="backbone: no file"):
        METRICS.create("lpips", backbone=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="no features"):
        METRICS.create("lpips", backbone=str(bad))(*_image_pairs(8))


# --- matrix spec entries ------------------------------------------------------------------------------------------

def _spec(metrics):
    return {"name": "unit", "data": {"source": "digits", "image_size": 32, "limit": 12},
            "models": {"v": {"tiny": "llava", "seed": 0}}, "victims": ["v"], "metrics": metrics}


def test_spec_metric_mappings_parse(alexnet_file):
    spec = MatrixSpec.from_dict(_spec(["psnr", {"name": "lpips", "config": {"backbone": str(alexnet_file)}},
                                       {"name": "question_perplexity_lm", "model": "v"},
                                       {"name": "question_perplexity", "config": {"folds": 3}}]))
    assert spec.metric_names == ("psnr", "lpips", "question_perplexity_lm", "question_perplexity")
    assert spec.metrics[1] == MetricSpec("lpips", {"backbone": str(alexnet_file)})
    assert spec.metrics[2].model == "v" and spec.metrics[3].config == {"folds": 3}
    assert MatrixSpec.from_dict(_spec("ssim")).metrics == (MetricSpec("ssim"),)


def test_spec_file_resolves_a_relative_backbone(alexnet_file, tmp_path):
    (tmp_path / "alexnet.pth").write_bytes(alexnet_file.read_bytes())
    (tmp_path / "spec.yaml").write_text(
        "name: unit\ndata: {source: digits, image_size: 32, limit: 12}\nmodels: {v: {tiny: llava}}\nvictims: [v]\n"
        "metrics: [psnr, {name: lpips, config: {backbone: alexnet.pth}}]\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.metrics[1].config == {"backbone": str(tmp_path / "alexnet.pth")}


@pytest.mark.parametrize("metrics, message", [
    ([{"name": "psnr", "colour": 1}], r"metrics\[0\]: unknown keys \['colour'\]"),
    ([{"name": "vibes"}], r"metrics\[0\]\.name: unknown metric 'vibes'"),
    (["psnr", 3], r"metrics\[1\]: a name or a mapping"),
    ([{"name": "question_perplexity_lm"}], r"metrics\[0\]\.model: .*got None"),
    ([{"name": "question_perplexity_lm", "model": "gpt"}], r"metrics\[0\]\.model: .*'gpt'"),
    ([{"name": "psnr", "model": "v"}], r"metrics\[0\]\.model: psnr uses no model"),
    ([{"name": "lpips"}], r"metrics\[0\]\.config: backbone: not given"),
    ([{"name": "question_bleu", "config": {"levle": "corpus"}}], r"metrics\[0\]\.config: .*unknown config key"),
    ([{"name": "question_bleu", "config": "corpus"}], r"metrics\[0\]\.config: a mapping"),
    (["psnr", {"name": "psnr"}], r"metrics: \['psnr'\] listed more than once"),
])
def test_bad_spec_metric_entries(metrics, message):
    with pytest.raises(MatrixError, match=message):
        MatrixSpec.from_dict(_spec(metrics))
