"""End-to-end: the demo pipeline on a small slice (the full demo is the README's main job)."""
import csv
import json

from toolkit.cli import main
from toolkit.release import read_release


def test_demo_small_slice_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--limit", "80", "--epochs", "1", "--quiet",
               "--defenses", "clean", "random_noise"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| clean | none |" in printed and "| random_noise | jpeg-10 |" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["defense"], r["countermeasure"]) for r in rows] == [
        ("clean", "none"), ("clean", "jpeg-10"), ("random_noise", "none"), ("random_noise", "jpeg-10")]
    for r in rows:
        assert 0.0 <= float(r["clean_test_accuracy"]) <= 1.0
    noisy = rows[2]
    assert float(noisy["linf_255"]) == 8 and 30 < float(noisy["psnr_db"]) < 45
    release = read_release(out / "releases" / "random_noise")
    assert len(release) == int(rows[0]["train_samples"])
    meta = json.loads((out / "results.json").read_text())
    assert meta["versions"]["transformers"]


def test_countermeasures_never_see_the_test_split(tmp_path, monkeypatch):
    from toolkit.attacks.base import Transform
    from toolkit.demo import run_demo

    seen = []
    original = Transform.__call__

    def spy(self, dataset):
        seen.append((dataset.name, {s.id for s in dataset}))
        return original(self, dataset)

    monkeypatch.setattr(Transform, "__call__", spy)
    rows = run_demo(tmp_path / "d", epochs=1, limit=60, progress=False, defenses=["clean"], write_releases=False)
    from toolkit.digits import load_digits_vqa

    _, test = load_digits_vqa(image_size=32, limit=60)
    test_ids = {s.id for s in test}
    assert seen and all(name.startswith("digits-train") and not ids & test_ids for name, ids in seen)
    assert rows[0]["test_samples"] == len(test)
