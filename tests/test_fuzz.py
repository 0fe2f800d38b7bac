"""Property-based tests (hypothesis) of everything a user hands in: dataset files, matrix specs, CLI arguments,
and pickled weight files. Bad input must end in one clear error naming the file or field (never another
exception), write nothing, and never run code from a pickle."""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from toolkit.data import DataError, VQADataset, load_dataset

FAST = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: JSON-able values of every type, with odd Unicode, NaN / inf and nesting
ODD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True),
                 ODD_TEXT, st.sampled_from(["", " ", "\u200b", "ﬁ", "İ", "<image>", "../x", "a\x00b"]))
JSON = st.recursive(LEAF, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                  st.dictionaries(ODD_TEXT, kids, max_size=3)), max_leaves=8)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with almost no data (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A dataset folder with good, empty, truncated, huge-claiming and escaping images."""
    root = tmp_path_factory.mktemp("fuzz") / "data"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "img" / "ok.png")
    Image.new("L", (1, 1)).save(root / "img" / "one.png")
    (root / "img" / "empty.png").write_bytes(b"")
    (root / "img" / "cut.png").write_bytes((root / "img" / "ok.png").read_bytes()[:30])
    (root / "img" / "bomb.png").write_bytes(_png_header(200_000, 200_000))
    (root / "img" / "text.png").write_text("not an image")
    outside = root.parent / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, root / "img" / "link.png")
    os.symlink(root / "img" / "ok.png", root / "img" / "inside.png")
    return root


IMAGES = st.one_of(JSON, st.sampled_from(["img/ok.png", "img/one.png", "img/empty.png", "img/cut.png",
                                           "img/bomb.png", "img/text.png", "img/link.png", "img/inside.png",
                                           "img/missing.png", "../secret.png", "/etc/hostname", "img", ""]))
TURN = st.fixed_dictionaries({}, optional={"from": st.one_of(st.sampled_from(["human", "gpt"]), JSON),
                                          "value": st.one_of(ODD_TEXT, JSON)})
LLAVA_RECORD = st.fixed_dictionaries({}, optional={
    "id": JSON, "image": IMAGES, "choices": st.one_of(st.lists(ODD_TEXT, max_size=3), JSON),
    "conversations": st.one_of(st.lists(TURN, max_size=4), JSON), "extra": JSON})
JSONL_RECORD = st.fixed_dictionaries({}, optional={
    "id": JSON, "image": IMAGES, "question": st.one_of(ODD_TEXT, JSON), "answer": st.one_of(ODD_TEXT, JSON),
    "choices": st.one_of(st.lists(ODD_TEXT, max_size=3), JSON)})


def _check_load(path: Path) -> None:
    before = sorted(p.name for p in path.parent.rglob("*"))
    try:
        data = load_dataset(path)
    except DataError as exc:
        message = str(exc)
        assert str(path.parent) in message or str(path) in message, message  # names the file
        assert "\n" not in message.strip()
    else:
        assert isinstance(data, VQADataset) and len(data) >= 1
        for s in data:  # what loads is well-formed
            assert s.image.dtype.name == "uint8" and s.image.ndim == 3 and s.image.shape[2] == 3
            assert s.question.strip() and s.answer.strip()
    assert sorted(p.name for p in path.parent.rglob("*")) == before  # nothing written


@FAST
@given(records=st.one_of(st.lists(LLAVA_RECORD, max_size=4), JSON))
def test_llava_json_loader_never_crashes(folder, records):
    path = folder / "train.json"
    path.write_text(json.dumps(records, allow_nan=True))
    _check_load(path)


@FAST
@given(records=st.lists(st.one_of(JSONL_RECORD, JSON), max_size=4), garbage=st.booleans())
def test_jsonl_loader_never_crashes(folder, records, garbage):
    path = folder / "train.jsonl"
    lines = [json.dumps(r, allow_nan=True) for r in records] + (["{not json"] if garbage else [])
    path.write_text("\n".join(lines))
    _check_load(path)


@FAST
@given(image=st.one_of(
    st.builds(lambda shape: torch.zeros(shape).numpy(), st.lists(st.integers(0, 5), min_size=0, max_size=4)),
    st.sampled_from([float("nan"), math.inf, -1.0, 2.0]).map(lambda v: torch.full((4, 4, 3), v).numpy()),
    st.just(torch.zeros(4, 4, 3, dtype=torch.int64).numpy())))
def test_check_image_names_every_bad_array(image):
    from toolkit.data import check_image

    try:
        out = check_image(image, "where")
    except DataError as exc:
        assert str(exc).startswith("where: ")
    else:
        assert out.dtype.name == "uint8" and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 1


SPEC_KEYS = ["name", "data", "models", "defenses", "countermeasures", "victims", "finetune", "metrics", "seeds",
             "zero_shot", "limt", "data.limt"]
SPEC_VALUES = st.one_of(JSON, st.sampled_from([
    {"source": "digits", "limit": 30}, {"source": "digits", "limt": 30}, {"train": "x.json", "test": "y.json"},
    {"v": {"tiny": "llava"}}, {"v": {"tiny": "llava", "seed": "1"}}, ["emn"], [{"name": "emn", "surrogates": ["v"]}],
    ["random_noise"], [{"name": "jpeg", "config": {"quality": "8/255"}}], ["v"], "v", 1, [0, 1], "0",
    {"mode": "lora", "lr": "1/0"}, ["accuracy", "nope"], {"eps": "8/255"}]))


@FAST
@given(spec=st.dictionaries(st.sampled_from(SPEC_KEYS), SPEC_VALUES, max_size=8))
def test_spec_loader_accepts_or_names_the_field(spec):
    from toolkit.matrix import MatrixError, MatrixSpec

    try:
        MatrixSpec.from_dict(spec)
    except MatrixError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


@FAST
@given(defense=st.one_of(st.sampled_from(["emn", "random_noise", "mmguard_crs"]), ODD_TEXT),
       eps=st.one_of(st.none(), ODD_TEXT, st.sampled_from(["8/255", "2", "-1", "nan", "inf", "1/0", "0"])),
       sets=st.lists(st.one_of(ODD_TEXT, st.sampled_from(["rounds=0", "rounds=x", "eps=nan", "=1", "k=", "seed=1.5",
                                                          "granularity=pixel"])), max_size=3),
       data=st.sampled_from(["missing.json", "img/ok.png", "train.json", ""]))
def test_protect_arguments_fail_with_one_line_and_write_nothing(folder, tmp_path_factory, defense, eps, sets, data,
                                                                capsys):
    from toolkit.cli import main

    out = tmp_path_factory.mktemp("out") / "release"
    (folder / "train.json").write_text(json.dumps([{"id": "a", "image": "img/ok.png", "conversations": [
        {"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "a"}]}]))
    argv = ["protect", "--defense", defense, "--data", str(folder / data) if data else "", "--out", str(out),
            "--quiet"] + (["--eps", eps] if eps is not None else []) + [a for s in sets for a in ("--set", s)]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    err = capsys.readouterr().err
    if rc == 0:  # random_noise with a usable budget needs no surrogate: a real release
        assert defense == "random_noise" and (out / "manifest.json").is_file()
        return
    assert rc == 2
    assert "Traceback" not in err and "error" in err
    assert not out.exists()


class _Payload:
    """Pickles to a call that creates a marker file: a stand-in for code a malicious pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_a_checkpoint_or_weights_file_is_refused(tmp_path, tiny_llava_dir):
    import shutil

    from toolkit.checkpoint import CheckpointError, RunCheckpoint
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny.clip import build_tiny_clip
    from toolkit.surrogates.tiny.timm import build_tiny_timm

    marker = tmp_path / "ran"
    evil = {"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}
    torch.save(evil, tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        RunCheckpoint(tmp_path / "run.pt", "key").load()
    for name, build in (("timm", build_tiny_timm), ("open_clip", build_tiny_clip)):
        folder = build(tmp_path / name, seed=0)
        for weights in [p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".bin")]:
            weights.unlink()
        torch.save(evil, folder / ("pytorch_model.bin" if name == "timm" else "open_clip_pytorch_model.bin"))
        with pytest.raises(ValueError, match="refusing to load .*pickled objects"):
            load_surrogate(folder)
    llava = tmp_path / "llava"
    shutil.copytree(tiny_llava_dir, llava)
    (llava / "model.safetensors").unlink()
    torch.save(evil, llava / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load .*pickled objects"):
        load_surrogate(llava)
    assert not marker.exists()  # no payload ran anywhere
