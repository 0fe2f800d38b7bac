"""benchmarks/testbed_table.py: the paired drop and first-epoch loss-gap tables from matrix rows."""
import json
from pathlib import Path

from toolkit.registry import import_plugin

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "testbed_table.py"


def _row(victim, defense, seed, acc, losses, cm="none"):
    return {"matrix": "t", "seed": seed, "victim": victim, "defense": defense, "countermeasure": cm,
            "threat_model": "gray-box", "accuracy": acc, "train_losses": losses, "error": None}


def test_loss_gap_is_paired_per_seed_and_signed():
    table = import_plugin(str(SCRIPT))
    rows = [_row("v", "clean", 0, 0.6, [4.0, 1.0]), _row("v", "clean", 1, 0.6, [3.0, 1.0]),
            _row("v", "mem", 0, 0.5, [3.5, 1.0]), _row("v", "mem", 1, 0.5, [2.7, 1.0]),
            _row("v", "emn", 0, 0.6, [4.2, 1.0]),
            _row("v", "mem", 0, 0.1, [0.1, 0.1], cm="jpeg-10")]  # another column: ignored
    text = table.loss_gap_table(rows)
    assert "| mem | -0.40 ± 0.14 [2] |" in text  # (3.5 - 4.0, 2.7 - 3.0)
    assert "| emn | +0.20 ± 0.00 [1] |" in text
    assert "| clean |" not in text
    assert "| mem | +0.00 ± 0.00 [2] |" in table.loss_gap_table(rows, epoch=1)


def test_main_writes_drops_and_loss_gap(tmp_path):
    table = import_plugin(str(SCRIPT))
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row("v", "clean", s, 0.6 + 0.01 * s, [4.0 + s, 1.0]) for s in range(3)]
    rows += [_row("v", "mem", s, 0.5, [3.6 + s, 1.0]) for s in range(3)]
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert table.main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert "| mem | -0.40 ± 0.00 [3] |" in (tmp_path / "out" / "loss-gap.md").read_text()
    assert "| mem | 11.0 ± 1.0 |" in (tmp_path / "out" / "drops.md").read_text()
