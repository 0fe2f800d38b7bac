"""End-to-end: the demo (the packaged mini matrix) on a small slice; the full demo is the README's main job."""
import csv

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
        assert 0.0 <= float(r["accuracy_mean"]) <= 1.0 and r["victim"] == "victim"
    noisy = rows[2]
    assert round(float(noisy["linf"]) * 255, 6) == 8 and 30 < float(noisy["psnr"]) < 45
    releases = list((out / "cache" / "protect").glob("*/release"))
    assert len(releases) == 1 and len(read_release(releases[0])) > 0
    assert (out / "heatmap-victim.png").is_file()


def test_demo_rejects_unknown_label(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--defenses", "nonsense"]) == 2
    assert "unknown demo defense labels" in capsys.readouterr().err


def test_countermeasures_never_see_the_test_split(tmp_path, monkeypatch):
    from toolkit.attacks.base import Transform
    from toolkit.demo import run_demo
    from toolkit.digits import load_digits_vqa

    seen = []
    original = Transform.__call__

    def spy(self, dataset):
        seen.append({s.id for s in dataset})
        return original(self, dataset)

    monkeypatch.setattr(Transform, "__call__", spy)
    rows = run_demo(tmp_path / "d", epochs=1, limit=60, progress=False, defenses=["clean"])
    _, test = load_digits_vqa(image_size=32, limit=60)
    test_ids = {s.id for s in test}
    assert seen and all(not ids & test_ids for ids in seen)
    assert {r["countermeasure"] for r in rows} == {"none", "jpeg-10"}
