import numpy as np
import pytest

pytest.importorskip("diffusers")

from toolkit import COUNTERMEASURES, DEFENSES  # noqa: E402
from toolkit.attacks import train_purifier  # noqa: E402


@pytest.fixture(scope="module")
def purifier_dir(tmp_path_factory, digits_small):
    train, _ = digits_small
    return train_purifier(train, tmp_path_factory.mktemp("purifier"), epochs=2, channels=8, timesteps=50, seed=0)


def test_purification_end_to_end(purifier_dir, digits_small):
    train, test = digits_small
    protected = DEFENSES.create("random_noise", seed=1).protect(test[:8]).dataset
    pur = COUNTERMEASURES.create("diffusion_purification", model=str(purifier_dir), t_star=0.2, batch_size=4)
    out = pur(protected)
    again = COUNTERMEASURES.create("diffusion_purification", model=str(purifier_dir), t_star=0.2, batch_size=4)(protected)
    assert [s.id for s in out] == [s.id for s in protected]
    assert all(a.image.shape == b.image.shape and a.image.dtype == np.uint8 for a, b in zip(out, protected))
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(out, protected))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(out, again))  # seeded


def test_purification_identity_at_zero_and_needs_model(purifier_dir, digits_small):
    data = digits_small[1][:3]
    assert COUNTERMEASURES.create("diffusion_purification", t_star=0.0)(data) is data
    with pytest.raises(RuntimeError, match="model"):
        COUNTERMEASURES.create("diffusion_purification", t_star=0.1)(data)
    with pytest.raises(FileNotFoundError, match="unet"):
        COUNTERMEASURES.create("diffusion_purification", model=str(purifier_dir / "unet"))
