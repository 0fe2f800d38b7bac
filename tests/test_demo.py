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
