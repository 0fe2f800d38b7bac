"""Per-image cost of the learned countermeasures: LightShed training and diffusion purification."""
import pytest

from toolkit import COUNTERMEASURES, DEFENSES
from toolkit.digits import load_digits_vqa

from _timing import median_seconds


@pytest.fixture(scope="module")
def pairs():
    train, _ = load_digits_vqa(image_size=32, seed=0, limit=40)
    clean = train[:32]
    return clean, DEFENSES.create("random_noise", seed=0).protect(clean).dataset


def test_lightshed_training_epoch(benchmark, pairs):
    clean, protected = pairs

    def fit():
        return COUNTERMEASURES.create("lightshed", epochs=1, seed=0).fit_pairs(clean, protected, eps=8 / 255)

    fitted = benchmark(fit)
    assert fitted.estimator is not None and len(fitted(protected)) == len(protected)  # it trained and applies
    if median_seconds(benchmark) is not None:
        benchmark.extra_info["seconds_per_image_epoch"] = median_seconds(benchmark) / len(clean)


def test_diffusion_purification(benchmark, pairs, tmp_path_factory):
    pytest.importorskip("diffusers")
    from toolkit.attacks import train_purifier

    clean, protected = pairs
    folder = train_purifier(clean, tmp_path_factory.mktemp("pur"), epochs=1, channels=16, timesteps=200)
    pur = COUNTERMEASURES.create("diffusion_purification", model=str(folder), t_star=0.1, batch_size=32)
    out = benchmark(pur, protected[:8])
    assert len(out) == 8 and all(a.image.shape == b.image.shape for a, b in zip(out, protected[:8]))
    assert any((a.image != b.image).any() for a, b in zip(out, protected[:8]))  # purification changed pixels
    if median_seconds(benchmark) is not None:
        benchmark.extra_info["seconds_per_image"] = median_seconds(benchmark) / 8
