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


class _Ctx:
    """The part of a FitContext the purifier reads."""

    def __init__(self, clean, fit):
        self.fit, self._clean = fit, clean

    def clean_data(self):
        return self._clean


def test_without_a_model_the_purifier_is_fitted_on_the_attackers_clean_images(digits_small):
    train, test = digits_small
    assert not COUNTERMEASURES.create("diffusion_purification", t_star=0.0).needs_fit
    pur = COUNTERMEASURES.create("diffusion_purification", t_star=0.2, batch_size=4)
    assert pur.needs_fit
    info = pur.fit_from(_Ctx(train[:16], {"epochs": 1, "channels": 8, "timesteps": 50}))
    assert info == {"purifier_trained_on": 16}
    assert pur.unet.config.block_out_channels[0] == 8 and pur.scheduler.config.num_train_timesteps == 50
    protected = DEFENSES.create("random_noise", seed=1).protect(test[:4]).dataset
    out = pur(protected)  # the weights live on after the training folder is gone
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(out, protected))
    again = COUNTERMEASURES.create("diffusion_purification", t_star=0.2, batch_size=4)
    again.fit_from(_Ctx(train[:16], {"channels": 8, "timesteps": 50, "epochs": 1}))
    assert again.unet is pur.unet  # the same clean data and fit: trained once per process
    other = COUNTERMEASURES.create("diffusion_purification", t_star=0.2, batch_size=4)
    other.fit_from(_Ctx(train[16:32], {"epochs": 1, "channels": 8, "timesteps": 50}))
    assert other.unet is not pur.unet


def test_a_fitted_purifier_column_needs_attacker_clean_data_and_valid_fit_keys():
    from toolkit.matrix.spec import MatrixError, MatrixSpec

    spec = {"name": "p", "data": {"source": "digits", "image_size": 16}, "models": {"v": {"tiny": "llava", "seed": 1}},
            "defenses": [{"label": "rn", "name": "random_noise"}], "victims": ["v"],
            "countermeasures": [{"label": "dp", "name": "diffusion_purification", "fit": {"epochs": 2}}]}
    with pytest.raises(MatrixError, match="attacker_clean"):
        MatrixSpec.from_dict(spec)
    spec["data"]["attacker_clean"] = 20
    assert MatrixSpec.from_dict(spec).countermeasures[-1].fitted == ("diffusion_purification",)
    spec["countermeasures"][0]["fit"] = {"epochs": 0}
    with pytest.raises(MatrixError, match="epochs"):
        MatrixSpec.from_dict(spec)
    spec["countermeasures"][0]["fit"] = {"steps": 3}
    with pytest.raises(MatrixError, match="unknown keys"):
        MatrixSpec.from_dict(spec)
