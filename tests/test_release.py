import json
import shutil

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


def _rewrite(release, rel, mutate):
    """Change one file of a release and re-sign it in the manifest (so only the content checks can catch it)."""
    import hashlib

    path = release / rel
    mutate(path)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    (release / "manifest.json").write_text(json.dumps(manifest))


def test_verify_checks_files_budget_answers_and_questions(tmp_path, digits_small):
    from PIL import Image

    from toolkit.cli import main
    from toolkit.defenses import DEFENSES
    from toolkit.release import ReleaseError, verify_release

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    records = []
    for i, s in enumerate(list(digits_small[0])[:6]):
        Image.fromarray(s.image).save(data / "img" / f"{i}.png")
        records.append({"id": s.id, "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + s.question}, {"from": "gpt", "value": s.answer}]})
    (data / "train.json").write_text(json.dumps(records))
    from toolkit.data import load_dataset

    release = tmp_path / "release"
    write_release(DEFENSES.create("random_noise", eps=8 / 255).protect(load_dataset(data / "train.json")), release)
    summary = verify_release(release, data / "train.json")
    assert summary["samples"] == 6 and 0 < summary["max_change_levels"] <= 8 == summary["eps_levels"]
    assert main(["verify", str(release), "--source", str(data / "train.json")]) == 0

    def brighten(path):
        img = np.asarray(Image.open(path)).copy()
        v = img[0, 0].astype(int)
        img[0, 0] = np.where(v > 127, v - 60, v + 60).astype(np.uint8)
        Image.fromarray(img).save(path)

    for rel, mutate, message in [
        ("images/000000.png", brighten, "changed by .* grey levels, over the budget of 8"),
        ("data.jsonl", lambda p: p.write_text(p.read_text().replace("What digit", "Which digit", 1)),
         "is not the source's .* with at most 0 words inserted"),
        ("data.jsonl", lambda p: p.write_text(p.read_text().replace('"What digit', '"zebra What digit', 1)),
         "at most 0 words inserted"),
    ]:
        broken = tmp_path / f"broken-{message[:6].replace(' ', '')}"
        shutil.copytree(release, broken)
        _rewrite(broken, rel, mutate)
        with pytest.raises(ReleaseError, match=message):
            verify_release(broken, data / "train.json")
    unsigned = tmp_path / "unsigned"
    shutil.copytree(release, unsigned)
    (unsigned / "data.jsonl").write_text((unsigned / "data.jsonl").read_text().replace("What", "Whot", 1))
    with pytest.raises(ReleaseError, match="sha256 mismatch"):
        verify_release(unsigned, data / "train.json")
    assert main(["verify", str(unsigned), "--source", str(data / "train.json")]) == 2


def test_inserted_words_finds_one_inserted_block_only():
    from toolkit.release import inserted_words

    src = "What digit is this ?".split()
    assert inserted_words(src, "zebra lamp What digit is this ?".split()) == ["zebra", "lamp"]
    assert inserted_words(src, "What digit zebra is this ?".split()) == ["zebra"]
    assert inserted_words(src, "What digit is this ? zebra".split()) == ["zebra"]
    assert inserted_words(src, src) == []
    assert inserted_words(src, "What number is this ?".split()) is None
    assert inserted_words(src, "zebra What digit is lamp this ?".split()) is None
    assert inserted_words(src, "What is this ?".split()) is None


def _llava_source(folder, samples):
    """A LLaVA-JSON source with JPEG and PNG images in a subfolder, a multi-turn record and extra keys."""
    (folder / "imgs" / "sub").mkdir(parents=True)
    records = []
    for i, s in enumerate(samples):
        rel = f"imgs/sub/{i}.jpg" if i % 2 else f"imgs/{i}.png"
        Image.fromarray(s.image).save(folder / rel, quality=90)
        conv = [{"from": "human", "value": f"{s.question}\n<image>"}, {"from": "gpt", "value": s.answer}]
        if i == 0:
            conv += [{"from": "human", "value": "And why?"}, {"from": "gpt", "value": "Because."}]
        records.append({"id": f"r{i}", "image": rel, "conversations": conv, "source": "owner", "n": i})
    (folder / "train.json").write_text(json.dumps(records))
    return folder / "train.json", records


def test_llava_layout_keeps_records_and_names_and_verifies(tmp_path, digits_small):
    from toolkit.data import load_llava_json
    from toolkit.release import verify_release

    source, records = _llava_source(tmp_path / "src", list(digits_small[0])[:6])
    data = load_llava_json(source)
    protection = DEFENSES.create("random_noise", eps=8 / 255, seed=1).protect(data)
    # a trigger-bearing release: two words inserted at the start of every question (as a defense would)
    triggered = protection.dataset.replace_samples(
        [s.with_(question="zebra quartz " + s.question, meta={**s.meta, "trigger": {"words": ["zebra", "quartz"]}})
         for s in protection.dataset])
    protection.dataset, protection.config = triggered, {**protection.config, "max_trigger_tokens": 2}
    out = write_release(protection, tmp_path / "public", layout="llava")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "llava"
    released = json.loads((out / "data.json").read_text())
    assert [r["image"] for r in released] == [r["image"].replace(".jpg", ".png") for r in records]  # lossy -> PNG
    for rec, src in zip(released, records):
        assert {k: v for k, v in rec.items() if k not in ("image", "conversations")} == \
            {k: v for k, v in src.items() if k not in ("image", "conversations")}  # every other key as it was
        assert len(rec["conversations"]) == len(src["conversations"])
        assert rec["conversations"][0]["value"] == "zebra quartz " + src["conversations"][0]["value"]  # <image> kept
        assert rec["conversations"][1:] == src["conversations"][1:]  # answers and later turns untouched
        assert "zebra" not in json.dumps({k: v for k, v in rec.items() if k != "conversations"})  # no annotation
        assert Image.open(out / rec["image"]).format == "PNG"
    back = load_llava_json(out / "data.json")  # it loads as a plain LLaVA dataset
    assert [s.question for s in back] == [s.question for s in triggered]
    summary = verify_release(out, source)
    assert summary["samples"] == 6 and summary["longest_trigger"] == 2 and summary["max_change_levels"] <= 8
    assert read_release(out)[0].id == "r0"


def test_llava_layout_of_a_jsonl_source_and_tampering(tmp_path, protection):
    from toolkit.release import verify_release

    out = write_release(protection, tmp_path / "public", layout="llava")
    rec = json.loads((out / "data.json").read_text())[0]
    assert rec["conversations"] == [{"from": "human", "value": "<image>\n" + protection.dataset[0].question},
                                    {"from": "gpt", "value": protection.dataset[0].answer}]
    img = np.asarray(Image.open(out / rec["image"])).copy()
    img[0, 0] ^= 255
    Image.fromarray(img).save(out / rec["image"])
    with pytest.raises(ReleaseError, match="sha256"):
        verify_release(out, tmp_path)  # the file check comes first
    with pytest.raises(ValueError, match="layout must be one of"):
        write_release(protection, tmp_path / "other", layout="coco")


def test_contact_sheet_shows_images_and_highlights_inserted_words(tmp_path, digits_small):
    from toolkit.cli import main
    from toolkit.data import load_llava_json

    source, _ = _llava_source(tmp_path / "src", list(digits_small[0])[:6])
    protection = DEFENSES.create("random_noise", eps=8 / 255, seed=1).protect(load_llava_json(source))
    plain = write_release(protection, tmp_path / "plain", layout="llava")
    protection.dataset = protection.dataset.replace_samples(
        [s.with_(question="zebra " + s.question) for s in protection.dataset])
    protection.config = {**protection.config, "max_trigger_tokens": 1}
    triggered = write_release(protection, tmp_path / "trig", layout="llava")

    def red_pixels(path):
        img = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(img - np.array([214, 39, 40])).max(-1) < 30).sum())  # the highlight colour #d62728

    assert main(["verify", str(triggered), "--source", str(source), "--preview", str(tmp_path / "trig.png"),
                 "--preview-samples", "3"]) == 0
    assert main(["verify", str(plain), "--source", str(source), "--preview", str(tmp_path / "plain.png"),
                 "--preview-samples", "3"]) == 0
    sheet = Image.open(tmp_path / "trig.png")
    assert sheet.size[0] >= 900 and sheet.size[1] >= 3 * 150  # three rows of four panels
    assert red_pixels(tmp_path / "trig.png") > 20 and red_pixels(tmp_path / "plain.png") == 0
