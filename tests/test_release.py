import json

import numpy as np
import pytest
from PIL import Image

from toolkit import DEFENSES, read_release, write_release
from toolkit.data import VQADataset
from toolkit.release import ReleaseError, sha256_file


@pytest.fixture()
def protection(digits_small):
    train, _ = digits_small
    return DEFENSES.create("random_noise", eps=8 / 255, seed=3).protect(train[:12])


def test_release_roundtrip_and_manifest(tmp_path, protection):
    out = write_release(protection, tmp_path / "rel")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["defense"] == "random_noise" and manifest["eps_levels"] == 8 and manifest["seed"] == 3
    assert manifest["versions"]["torch"]
    assert set(manifest["files"]) == {"data.jsonl"} | {f"images/{i:06d}.png" for i in range(12)}
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest
    back = read_release(out)
    assert [s.id for s in back] == [s.id for s in protection.dataset]
    for a, b in zip(back, protection.dataset):
        assert np.array_equal(a.image, b.image) and a.answer == b.answer and a.question == b.question
    assert not list(tmp_path.glob(".rel.tmp-*"))


def test_saved_pngs_within_eps_of_source(tmp_path, protection):
    out = write_release(protection, tmp_path / "rel")
    for i, src in enumerate(protection.source):
        img = np.asarray(Image.open(out / "images" / f"{i:06d}.png").convert("RGB")).astype(int)
        assert np.abs(img - src.image.astype(int)).max() <= 8
        assert np.abs(img - src.image.astype(int)).max() >= 7  # the noise is really there


def test_refuses_non_empty_folder_unless_told(tmp_path, protection):
    out = tmp_path / "rel"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ReleaseError, match="not empty"):
        write_release(protection, out)
    assert (out / "keep.txt").exists() and not (out / "manifest.json").exists()
    write_release(protection, out, overwrite=True)
    assert (out / "manifest.json").exists() and not (out / "keep.txt").exists()


def test_refuses_to_write_over_source(tmp_path, protection):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    source = VQADataset(list(protection.source), "s", root=src_dir)
    protection.source = source
    for target in (src_dir, src_dir / "inside", tmp_path):
        with pytest.raises(ReleaseError, match="source data folder"):
            write_release(protection, target, overwrite=True)


def test_tampered_release_detected(tmp_path, protection):
    out = write_release(protection, tmp_path / "rel")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(out / "images" / "000000.png")
    with pytest.raises(ReleaseError, match="sha256"):
        read_release(out)
