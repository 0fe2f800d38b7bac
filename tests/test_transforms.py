"""Data-side countermeasures: identity at zero strength, real effect otherwise, inputs untouched."""
import numpy as np
import pytest

from toolkit import COUNTERMEASURES
from toolkit.attacks import Chain
from toolkit.data import VQADataset, VQASample

# name -> (config at zero strength or None if undefined, config with an effect)
STRENGTHS = {
    "jpeg": (None, {"quality": 10}),
    "grayscale": ({"alpha": 0.0}, {"alpha": 1.0}),
    "bit_depth": ({"bits": 8}, {"bits": 2}),
    "gaussian_blur": ({"sigma": 0.0}, {"sigma": 1.5}),
    "median_filter": ({"size": 1}, {"size": 3}),
    "resize": ({"scale": 1.0}, {"scale": 0.5}),
    "rcp": ({"crop": 0.0}, {"crop": 0.25}),
    "punctuation": (None, {}),
    "lowercase": (None, {}),
    "whitespace": (None, {}),
}
TEXT_ONLY = {"punctuation", "lowercase", "whitespace"}


@pytest.fixture()
def noisy():
    rng = np.random.default_rng(0)
    return VQADataset([VQASample(f"s{i}", rng.integers(0, 256, (24, 20, 3)).astype(np.uint8),
                                 "  What  Digit, is THIS? ", "seven") for i in range(3)], "noisy")


TRAINING_SIDE = {"adversarial_training", "heavy_augmentation"}
FITTED = {"mix_clean", "lightshed", "diffusion_purification", "trigger_filter", "drop_rare_words"}


def test_table_covers_registry():
    assert set(STRENGTHS) | TRAINING_SIDE | FITTED == set(COUNTERMEASURES.names())


@pytest.mark.parametrize("name", sorted(n for n, (zero, _) in STRENGTHS.items() if zero is not None))
def test_identity_at_zero_strength(name, noisy):
    zero, _ = STRENGTHS[name]
    out = COUNTERMEASURES.create(name, **zero)(noisy)
    assert all(np.array_equal(a.image, b.image) and a.question == b.question for a, b in zip(out, noisy))


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_effect_and_inputs_untouched(name, noisy):
    before = [s.image.copy() for s in noisy]
    out = COUNTERMEASURES.create(name, **STRENGTHS[name][1])(noisy)
    assert all(np.array_equal(b, s.image) for b, s in zip(before, noisy))
    assert [s.answer for s in out] == [s.answer for s in noisy] and [s.id for s in out] == [s.id for s in noisy]
    if name in TEXT_ONLY:
        assert all(a.question != b.question for a, b in zip(out, noisy))
        assert all(np.array_equal(a.image, b.image) for a, b in zip(out, noisy))
    else:
        assert all(not np.array_equal(a.image, b.image) for a, b in zip(out, noisy))
        assert all(a.image.shape == b.image.shape and a.image.dtype == np.uint8 for a, b in zip(out, noisy))


def test_specific_values(noisy):
    img = noisy[0].image
    g = COUNTERMEASURES.create("grayscale")(noisy)[0].image
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    b = COUNTERMEASURES.create("bit_depth", bits=2)(noisy)[0].image
    assert set(np.unique(b)) <= {32, 96, 160, 224}
    blurred = COUNTERMEASURES.create("gaussian_blur", sigma=2.0)(noisy)[0].image
    assert blurred.astype(float).std() < img.astype(float).std() / 2
    q = [COUNTERMEASURES.create(n)(noisy)[0].question for n in ("punctuation", "lowercase", "whitespace")]
    assert q == ["  What  Digit is THIS ", "  what  digit, is this? ", "What Digit, is THIS?"]


def test_rcp_seeded(noisy):
    a = COUNTERMEASURES.create("rcp", crop=0.25, seed=1)(noisy)
    b = COUNTERMEASURES.create("rcp", crop=0.25, seed=1)(noisy)
    c = COUNTERMEASURES.create("rcp", crop=0.25, seed=2)(noisy)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_chain_composes_left_to_right(noisy):
    chain = COUNTERMEASURES.create("jpeg+punctuation", jpeg={"quality": 30})
    assert isinstance(chain, Chain) and chain.name == "jpeg+punctuation"
    out = chain(noisy)
    manual = COUNTERMEASURES.create("punctuation")(COUNTERMEASURES.create("jpeg", quality=30)(noisy))
    assert all(np.array_equal(a.image, b.image) and a.question == b.question for a, b in zip(out, manual))
    with pytest.raises(TypeError, match="member names"):
        COUNTERMEASURES.create("jpeg+punctuation", quality=30)
    with pytest.raises(KeyError, match="unknown countermeasure 'nope'"):
        COUNTERMEASURES.create("jpeg+nope")


@pytest.mark.parametrize("name, bad", [("bit_depth", {"bits": 0}), ("gaussian_blur", {"sigma": -1}),
                                       ("median_filter", {"size": 2.5}), ("resize", {"scale": 0}),
                                       ("rcp", {"crop": 0.95}), ("grayscale", {"alpha": 2})])
def test_bad_strength_rejected(name, bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        COUNTERMEASURES.create(name, **bad)


def test_mix_clean(noisy, digits_small):
    clean = digits_small[0][:5]
    mix = COUNTERMEASURES.create("mix_clean", ratio=2 / 3, seed=0)
    with pytest.raises(RuntimeError, match="fit"):
        mix(noisy)
    out = mix.fit(clean)(noisy)
    assert len(out) == 3 and sum(s.id.startswith("clean:") for s in out) == 2
    assert COUNTERMEASURES.create("mix_clean", ratio=0.0)(noisy) is noisy
    with pytest.raises(ValueError, match="clean samples"):
        COUNTERMEASURES.create("mix_clean", ratio=1.0).fit(clean[:1])(noisy)
