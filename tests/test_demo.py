"""End-to-end: the demo (the packaged mini matrix on the testbed) on a small slice; the full demo is the
README's main job. Uses the zoo weights shipped with the package (llava-a, llava-d)."""
import csv

from toolkit.cli import main
from toolkit.release import read_release


def test_demo_small_slice_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--limit", "60", "--epochs", "1", "--quiet",
               "--defenses", "clean", "mmguard-bph"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| clean | none |" in printed and "| mmguard-bph | trigger-filter | gray-box |" in printed
    assert "peak memory" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    cells = [(r["defense"], r["countermeasure"]) for r in rows]
    assert cells == [("zero-shot", "none"),
                     ("clean", "none"), ("clean", "jpeg-10"), ("clean", "trigger-filter"),
                     ("mmguard-bph", "none"), ("mmguard-bph", "jpeg-10"), ("mmguard-bph", "trigger-filter")]
    for r in rows:
        assert 0.0 <= float(r["accuracy_mean"]) <= 1.0 and r["victim"] == "victim"
    protected = rows[4]
    assert 0 < float(protected["linf"]) * 255 <= 8 + 1e-6 and float(protected["trigger_length"]) > 0
    # the drop against clean under the same countermeasure is reported next to the drop against clean
    assert float(rows[6]["drop_same_cm_mean"]) == float(rows[3]["accuracy_mean"]) - float(rows[6]["accuracy_mean"])
    releases = list((out / "cache" / "protect").glob("*/release"))
    assert len(releases) == 1 and len(read_release(releases[0])) > 0
    assert (out / "heatmap-victim.png").is_file()


def test_demo_rejects_unknown_label_and_tiny_slices(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--defenses", "nonsense"]) == 2
    assert "unknown demo defense labels" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--limit", "3"]) == 2
    assert "limit must be >= 10" in capsys.readouterr().err


def test_countermeasures_never_see_the_test_split(tmp_path, monkeypatch):
    from toolkit.attacks.base import Transform
    from toolkit.datasets import DATASETS
    from toolkit.demo import demo_spec, run_demo

    seen = []
    original = Transform.__call__

    def spy(self, dataset):
        seen.append({s.id for s in dataset})
        return original(self, dataset)

    monkeypatch.setattr(Transform, "__call__", spy)
    rows = run_demo(tmp_path / "d", epochs=1, limit=30, progress=False, defenses=["clean"])
    data = {k: v for k, v in demo_spec(limit=30)["data"].items() if k not in ("source", "attacker_clean")}
    _, test = DATASETS.create("scenes", seed=0, **data).build()
    test_ids = {s.id for s in test}
    assert seen and all(ids and not ids & test_ids for ids in seen)
    assert {r["countermeasure"] for r in rows} == {"none", "jpeg-10", "trigger-filter"}
