import numpy as np
import pytest

from toolkit import METRICS
from toolkit.data import VQASample
from toolkit.metrics import answer_matches, normalize_answer


def _s(answer, choices=None, **meta):
    return VQASample("x", np.zeros((2, 2, 3), np.uint8), "q", answer, choices, meta)


def test_normalize_answer():
    assert normalize_answer("  The Seven. ") == "seven"
    assert normalize_answer("a red-car") == "red car"


def test_answer_matching_variants():
    assert answer_matches("Seven!", _s("seven"))
    assert not answer_matches("seventy", _s("seven"))
    assert answer_matches("b", _s("cat", choices=["dog", "cat"]))
    assert not answer_matches("a", _s("cat", choices=["dog", "cat"]))
    assert answer_matches("7", _s("seven", aliases=["7"]))


def test_accuracy_metric():
    acc = METRICS.create("accuracy")
    assert acc(["seven", "two", "nine"], [_s("seven"), _s("three"), _s("nine")]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        acc(["a"], [])


def _pair(delta):
    src = np.full((16, 16, 3), 120, np.uint8)
    return [VQASample("a", src, "q", "x")], [VQASample("a", (src.astype(int) + delta).astype(np.uint8), "q", "x")]


def test_image_metrics_against_closed_form():
    clean, prot = _pair(8)
    assert METRICS.create("linf")(clean, prot) == pytest.approx(8 / 255)
    assert METRICS.create("psnr")(clean, prot) == pytest.approx(10 * np.log10(255 ** 2 / 64))
    assert METRICS.create("l2")(clean, prot) == pytest.approx(np.sqrt(16 * 16 * 3) * 8 / 255)
    assert METRICS.create("ssim")(clean, clean) == pytest.approx(1.0)
    assert METRICS.create("psnr")(clean, clean) == 100.0


def test_image_metrics_check_alignment():
    clean, prot = _pair(1)
    with pytest.raises(ValueError, match="ids differ"):
        METRICS.create("psnr")(clean, [prot[0].with_(id="b")])
