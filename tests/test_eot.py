"""Perturbations that survive purification: EOT pixel transforms and the low-frequency projection."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import DEFENSES
from toolkit.defenses.minmin import MinMinDefense, MinMinRun
from toolkit.engine import make_generator
from toolkit.pixel_transforms import (EOT, PIXEL_TRANSFORMS, energy_outside_band, jpeg_pillow, low_pass,
                                      straight_through_jpeg)

SMALL = {"rounds": 2, "train_steps": 2, "pgd_steps": 3, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
         "stop_accuracy": 1.0, "stop_clean_accuracy": 0.0}
ROBUST = [{"name": "jpeg", "quality": [10, 50]}, {"name": "gaussian_blur", "sigma": [0.5, 1.5]},
          {"name": "resize", "scale": [0.5, 0.9]}, {"name": "crop"}, {"name": "identity"}]


@pytest.fixture()
def data(digits_small):
    return digits_small[0][:8]


def _images(protection):
    return [s.image for s in protection.dataset]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_images(a), _images(b)))


# ----------------------------------------------------------------------------- the transforms
def test_straight_through_jpeg_forward_is_pillow_and_gradient_is_identity():
    gen = make_generator(0)
    x = torch.rand(2, 3, 24, 32, generator=gen)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for q in (10, 50):
        expected = []
        for a in u8:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=q)
            expected.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float() / 255
        xg = x.clone().requires_grad_(True)
        y = straight_through_jpeg(xg, q)
        assert torch.allclose(y, expected, atol=1e-6) and torch.equal(jpeg_pillow(x, q), expected)
        assert not torch.allclose(y, x, atol=1 / 255)  # the codec really changed the image
        w = torch.randn(y.shape, generator=gen)
        (g,) = torch.autograd.grad((y * w).sum(), xg)
        assert torch.equal(g, w)


@pytest.mark.parametrize("entry", ROBUST[1:4])
def test_transforms_keep_shape_and_range_and_pass_gradients(entry):
    x = torch.rand(2, 3, 20, 28, generator=make_generator(1)).requires_grad_(True)
    view = PIXEL_TRANSFORMS.create(entry["name"], **{k: v for k, v in entry.items() if k != "name"}).draw(
        make_generator(2))
    y = view(x)
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    (g,) = torch.autograd.grad(y.sum(), x)
    assert float(g.abs().sum()) > 0


def test_draws_are_seeded_and_a_fixed_set_draws_nothing():
    x = torch.rand(1, 3, 16, 16, generator=make_generator(3))
    a, b = EOT(ROBUST), EOT(ROBUST)
    ga, gb = make_generator(7), make_generator(7)
    for _ in range(10):
        va, vb = a.draw(ga), b.draw(gb)
        assert (va is None) == (vb is None)
        if va is not None:
            assert torch.equal(va(x), vb(x))
    gen = make_generator(5)
    state = gen.get_state()
    for entries in ([{"name": "identity"}], [{"name": "jpeg", "quality": 10}], [{"name": "resize", "scale": 0.5}]):
        EOT(entries).draw(gen)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("bad, field", [
    ({"eot": [{"name": "jpg"}]}, r"eot\[0\]\.name"),
    ({"eot": [{"name": "identity"}, {"name": "jpeg", "quality": [50, 10]}]}, r"eot\[1\].*quality"),
    ({"eot": [{"name": "jpeg", "quality": 0}]}, r"eot\[0\].*quality"),
    ({"eot": [{"name": "jpeg", "quality": 12.5}]}, r"quality"),
    ({"eot": [{"name": "gaussian_blur", "sigma": [-1, 1]}]}, r"eot\[0\].*sigma"),
    ({"eot": [{"name": "resize", "scale": 1.5}]}, r"scale"),
    ({"eot": [{"name": "crop", "size": 3}]}, r"eot\[0\].*size"),
    ({"eot": [{"quality": 10}]}, r"eot\[0\]"),
    ({"eot": {"name": "jpeg"}}, r"eot must be a list"),
    ({"eot_samples": 0}, "eot_samples"),
    ({"low_frequency": -1}, "low_frequency"),
    ({"low_frequency": 2.5}, "low_frequency"),
])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        DEFENSES.create("emn", **bad)


def test_the_hook_sees_the_transformed_pair():
    """objective gets (T(x), T(x + d) - T(x)): their sum is the transformed protected image."""
    seen = {}

    class Recorder(MinMinDefense):
        def objective(self, run, x, d, samples, idx):
            seen["x"], seen["d"] = x, d
            return (x + d).sum()

    defense = Recorder(eot=[{"name": "resize", "scale": 0.5}])
    x = torch.rand(2, 3, 16, 16, generator=make_generator(0))
    d = (torch.rand(2, 3, 16, 16, generator=make_generator(1)) - 0.5) * 0.06
    run = MinMinRun([], None, make_generator(0))
    defense.eot_objective(run, x, d, [], torch.arange(2))
    view = defense.eot.draw(make_generator(0))
    assert torch.allclose(seen["x"], view(x)) and torch.allclose(seen["x"] + seen["d"], view((x + d).clamp(0, 1)))
    defense = Recorder(eot=[{"name": "identity"}])
    defense.eot_objective(run, x, d, [], torch.arange(2))
    assert seen["x"] is x and seen["d"] is d


# ----------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("name, extra", [("emn", {}), ("emn", {"granularity": "class", "init": "uniform"}),
                                         ("mmguard_bph", {"max_trigger_tokens": 2, "trigger_candidates": 2,
                                                          "train_steps": 1, "eot_samples": 2})])
def test_identity_eot_reproduces_plain_pgd_bit_for_bit(name, extra, data, llava):
    # half the samples per round and small batches: one extra random draw would change later rounds' choices
    extra = {"pgd_fraction": 0.5, "batch_size": 4, **extra}
    plain = DEFENSES.create(name, **{**SMALL, **extra}).protect(data, [llava])
    same = DEFENSES.create(name, **{**SMALL, **extra, "eot": [{"name": "identity"}]}).protect(data, [llava])
    assert _same(plain, same)
    assert [s.question for s in plain.dataset] == [s.question for s in same.dataset]
    # guard: a real transform set does change the release
    robust = DEFENSES.create(name, **{**SMALL, **extra, "eot": ROBUST[:3]}).protect(data, [llava])
    assert not _same(plain, robust)


def test_eot_run_resumes_to_the_uninterrupted_result(data, llava, tmp_path, crash_then_resume):
    make = lambda: DEFENSES.create("emn", **{**SMALL, "rounds": 3, "eot": ROBUST, "eot_samples": 2})  # noqa: E731
    full = make().protect(data, [llava])
    assert _same(full, crash_then_resume(make, data, [llava], tmp_path / "run.pt"))


def test_low_pass_is_a_projection_onto_the_band():
    d = torch.randn(2, 3, 12, 20, generator=make_generator(0), dtype=torch.float64)
    lp = low_pass(d, 4)
    assert torch.allclose(low_pass(lp, 4), lp) and energy_outside_band(lp, 4) < 1e-20
    assert torch.allclose(low_pass(torch.ones_like(d), 1), torch.ones_like(d))  # DC is kept
    assert 0.5 < energy_outside_band(d, 4) < 1  # white noise is mostly outside a 4 x 4 band
    assert low_pass(d, 0) is d and low_pass(d, 20) is d


def test_low_frequency_release_keeps_its_energy_in_the_band(data, llava):
    k = 4
    x = [s.image.astype(np.float64) / 255 for s in data]

    def outside(protection):
        deltas = torch.from_numpy(np.stack([s.image.astype(np.float64) / 255 - c
                                            for s, c in zip(protection.dataset, x)])).permute(0, 3, 1, 2)
        assert float(deltas.abs().max()) <= 8 / 255 + 1e-9
        return energy_outside_band(deltas, k)

    config = {**SMALL, "init": "uniform"}
    plain = outside(DEFENSES.create("emn", **config).protect(data, [llava]))
    band = outside(DEFENSES.create("emn", **config, low_frequency=k).protect(data, [llava]))
    assert plain > 0.5
    assert band < 0.1 and band < plain / 10
