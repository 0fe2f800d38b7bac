"""Pins the torch interpolation mode every processor copy reads from a ``resample`` setting.

:data:`ACCEPTED` was recorded from the three readers that existed before the
processing code was folded into :mod:`toolkit.surrogates.processing` (CLIP /
Qwen's lenient reader, the torchvision-backend reader, the tiling reader); each
consumer must keep giving exactly these modes for every input it accepted then.
:data:`NOW_ACCEPTED` lists inputs the old readers rejected that the one parser
now reads, :data:`REJECTED` those every consumer still refuses.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image
from torchvision.transforms import InterpolationMode

from toolkit.surrogates.processing import (LENIENT_MODES, RESAMPLE_NAMES, TILING_MODES, TORCHVISION_MODES,
                                           resample_name)

R, IM = Image.Resampling, InterpolationMode
_MISSING = object()  # the processor has no ``resample`` attribute


def _processor(resample):
    return SimpleNamespace() if resample is _MISSING else SimpleNamespace(resample=resample)


#: consumer -> reader of one raw ``resample`` value (_MISSING: the processor lacks the attribute); the
#: ``missing`` codes are what each consumer's processor copy passes
CONSUMERS = {
    "lenient": lambda r: LENIENT_MODES.of(_processor(r), missing=3),
    "torchvision": lambda r: TORCHVISION_MODES.of(_processor(r), missing=2),
    "tiling": lambda r: TILING_MODES(r),
}

#: (consumer, input, torch mode) accepted before the refactor
ACCEPTED = [
    # lenient (DifferentiableClipProcessor, Qwen / GLM patch processors)
    *[("lenient", code, mode) for code, mode in
      [(0, "nearest"), (1, "bicubic"), (2, "bilinear"), (3, "bicubic"), (4, "bilinear"), (5, "bicubic"),
       (6, "bicubic"), (7, "bicubic"), (2.0, "bilinear"), ("3", "bicubic"), (_MISSING, "bicubic")]],
    *[("lenient", enum, mode) for enum, mode in
      [(R.NEAREST, "nearest"), (R.LANCZOS, "bicubic"), (R.BILINEAR, "bilinear"), (R.BICUBIC, "bicubic"),
       (R.BOX, "bilinear"), (R.HAMMING, "bicubic")]],
    # torchvision backend (DifferentiableFixedSizeProcessor, DifferentiableMllamaProcessor)
    *[("torchvision", value, mode) for value, mode in
      [(0, "nearest"), (2, "bilinear"), (3, "bicubic"), (2.0, "bilinear"), ("3", "bicubic"),
       (R.NEAREST, "nearest"), (R.BILINEAR, "bilinear"), (R.BICUBIC, "bicubic"),
       (IM.NEAREST, "nearest"), (IM.BILINEAR, "bilinear"), (IM.BICUBIC, "bicubic"),
       ("nearest", "nearest"), ("bilinear", "bilinear"), ("bicubic", "bicubic"), (_MISSING, "bilinear")]],
    # tiling (LLaVA-NeXT, InternVL, Idefics3 / SmolVLM)
    *[("tiling", value, mode) for value, mode in
      [(0, "nearest-exact"), (1, "lanczos"), (2, "bilinear"), (3, "bicubic"), (2.0, "bilinear"), (None, "bilinear"),
       (R.NEAREST, "nearest-exact"), (R.LANCZOS, "lanczos"), (R.BILINEAR, "bilinear"), (R.BICUBIC, "bicubic"),
       (IM.NEAREST_EXACT, "nearest-exact"), (IM.BILINEAR, "bilinear"), (IM.BICUBIC, "bicubic"),
       (IM.LANCZOS, "lanczos"), ("nearest-exact", "nearest-exact"), ("lanczos", "lanczos"),
       ("bilinear", "bilinear"), ("bicubic", "bicubic")]],
]

#: (consumer, input, torch mode) that raised before the refactor and are read now: the lenient reader takes
#: torchvision modes and None (unknown strings fall back to bicubic like unknown codes); the torchvision
#: reader takes None (its missing default) and "nearest-exact" (PIL's nearest filter, which it maps to torch
#: "nearest" as it maps PIL code 0); the tiling reader takes torchvision "nearest" and numeric strings
NOW_ACCEPTED = [
    *[("lenient", v, mode) for v, mode in
      [(None, "bicubic"), ("nearest", "nearest"), ("nearest-exact", "nearest"), ("bicubic", "bicubic"),
       ("lanczos", "bicubic"), ("box", "bilinear"), ("BICUBIC", "bicubic"), (IM.BICUBIC, "bicubic"),
       (IM.LANCZOS, "bicubic")]],
    *[("torchvision", v, mode) for v, mode in
      [(None, "bilinear"), (IM.NEAREST_EXACT, "nearest"), ("nearest-exact", "nearest")]],
    *[("tiling", v, mode) for v, mode in [(IM.NEAREST, "nearest-exact"), ("nearest", "nearest-exact"), ("3", "bicubic")]],
]

#: (consumer, input) still refused (NotImplementedError), as before the refactor
REJECTED = [
    *[("torchvision", v) for v in [1, 4, 5, 7, R.LANCZOS, R.BOX, R.HAMMING, IM.LANCZOS, IM.BOX, IM.HAMMING,
                                   "lanczos", "box", "hamming", "BICUBIC"]],
    *[("tiling", v) for v in [4, 5, 7, R.BOX, R.HAMMING, IM.BOX, IM.HAMMING, "box", "hamming", "BICUBIC"]],
]


@pytest.mark.parametrize("consumer,value,mode", ACCEPTED, ids=lambda v: repr(v)[:24])
def test_consumer_keeps_its_mode(consumer, value, mode):
    assert CONSUMERS[consumer](value) == mode


@pytest.mark.parametrize("consumer,value,mode", NOW_ACCEPTED, ids=lambda v: repr(v)[:24])
def test_inputs_read_since_the_merge(consumer, value, mode):
    assert CONSUMERS[consumer](value) == mode


@pytest.mark.parametrize("consumer,value", REJECTED, ids=lambda v: repr(v)[:24])
def test_unsupported_filters_raise(consumer, value):
    with pytest.raises(NotImplementedError):
        CONSUMERS[consumer](value)


@pytest.mark.parametrize("code,name", list(enumerate(RESAMPLE_NAMES)))
def test_one_parser_reads_every_form(code, name):
    pil = Image.Resampling(code)
    assert resample_name(code) == resample_name(pil) == resample_name(str(code)) == name
    assert resample_name(IM(name)) == resample_name(name) == name
    assert resample_name(None, default=name) == name
    with pytest.raises(ValueError):
        resample_name(len(RESAMPLE_NAMES))
