import dataclasses
import math

import pytest

import toolkit
from toolkit import COUNTERMEASURES, DEFENSES, METRICS, SURROGATES


def test_registries_importable_from_top_level_and_list_names():
    assert "emn" in toolkit.DEFENSES.names() and "random_noise" in DEFENSES.names()
    assert "jpeg" in COUNTERMEASURES.names()
    assert "llava" in SURROGATES.names()
    assert {"accuracy", "psnr", "ssim", "linf"} <= set(METRICS.names())
    assert DEFENSES.names() == sorted(DEFENSES.names())


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="unknown defense 'nope'.*emn"):
        DEFENSES.create("nope")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        DEFENSES.register("emn")(type("X", (), {}))


@pytest.mark.parametrize("registry", [DEFENSES, COUNTERMEASURES])
def test_unknown_config_key_raises_for_every_entry(registry):
    for name in registry.names():
        with pytest.raises(TypeError, match="unknown config key"):
            registry.create(name, definitely_not_a_key=1)


def test_configs_are_frozen():
    d = DEFENSES.create("emn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.config.eps = 0.5


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5, 2.0, math.nan, math.inf])
@pytest.mark.parametrize("name", ["emn", "random_noise"])
def test_eps_outside_unit_interval_rejected(name, eps):
    with pytest.raises(ValueError, match="eps must be in"):
        DEFENSES.create(name, eps=eps)


def test_eps_one_is_allowed():
    assert DEFENSES.create("random_noise", eps=1.0).config.eps == 1.0


def test_unregister_removes_an_entry_and_names_unknown_ones():
    from toolkit.registry import Registry

    reg = Registry("thing")

    @reg.register("a")
    class A:
        pass

    reg.unregister("a")
    assert "a" not in reg and reg.names() == []
    with pytest.raises(KeyError, match="unknown thing 'a'"):
        reg.unregister("a")
