"""Report aggregation: means, spreads and the two drops (vs clean, and vs clean under the same countermeasure)."""
import pytest

from toolkit.reports import aggregate, format_markdown


def _row(defense, cm, seed, acc, victim="v"):
    return {"victim": victim, "defense": defense, "countermeasure": cm, "seed": seed, "accuracy": acc,
            "threat_model": "gray-box"}


def test_drops_against_clean_and_against_clean_under_the_same_countermeasure():
    rows = [_row("clean", "none", 0, 0.80), _row("clean", "none", 1, 0.70),
            _row("clean", "jpeg", 0, 0.60), _row("clean", "jpeg", 1, 0.50),
            _row("d", "jpeg", 0, 0.40), _row("d", "jpeg", 1, 0.40),
            _row("d", "filter", 0, 0.30)]
    recs = {(r["defense"], r["countermeasure"]): r for r in aggregate(rows)}
    d = recs[("d", "jpeg")]
    assert d["accuracy_mean"] == pytest.approx(0.40) and d["accuracy_std"] == pytest.approx(0.0)
    assert d["drop_mean"] == pytest.approx(0.35)            # (0.80 - 0.40 + 0.70 - 0.40) / 2
    assert d["drop_same_cm_mean"] == pytest.approx(0.15)    # (0.60 - 0.40 + 0.50 - 0.40) / 2
    assert recs[("d", "filter")]["drop_same_cm_mean"] is None  # no clean + filter cell to compare with
    assert recs[("clean", "jpeg")]["drop_same_cm_mean"] == pytest.approx(0.0)
    table = format_markdown(list(recs.values()))
    assert "| d | jpeg | gray-box | 40.0 ± 0.0 | +35.0 | +15.0 | 2 |" in table
    assert "| d | filter | gray-box | 30.0 | +50.0 | - | 1 |" in table  # one seed: no "± 0.0"


def test_one_seed_reports_the_binomial_standard_error_not_a_zero_spread():
    rows = [{**_row("clean", "none", 0, 0.56), "n_test": 300}, {**_row("d", "none", 0, 0.50), "n_test": 300}]
    recs = {r["defense"]: r for r in aggregate(rows)}
    assert recs["d"]["accuracy_se"] == pytest.approx((0.5 * 0.5 / 300) ** 0.5)
    table = format_markdown(list(recs.values()))
    assert "| d | none | gray-box | 50.0 (SE 2.9) |" in table and "± 0.0" not in table
    assert "n = 300 test questions" in table


def test_warnings_for_a_clean_control_near_chance_and_a_small_test_split():
    from toolkit.reports import sanity_warnings

    near = [{**_row("clean", "none", 0, 0.13), "n_test": 50, "chance": 0.10},
            {**_row("d", "none", 0, 0.11), "n_test": 50, "chance": 0.10}]
    warnings = sanity_warnings(aggregate(near), "v")
    assert any("within 5 points of chance (10.0%" in w for w in warnings)
    assert any("only n = 50 test questions" in w for w in warnings)
    assert "**Warning:** the clean fine-tune reaches 13.0%" in format_markdown(aggregate(near))
    fine = [{**_row("clean", "none", 0, 0.80), "n_test": 600, "chance": 0.10}]
    assert sanity_warnings(aggregate(fine), "v") == []  # a learned control on enough questions: silent


def test_loss_plot_of_the_attackers_training(tmp_path):
    import json

    from toolkit.reports import write_reports

    rows = [{**_row(d, "none", s, 0.5), "n_test": 300, "train_losses": [2.0 - 0.1 * e - (0.5 if d == "emn" else 0)
                                                                     for e in range(5)]}
            for d in ("clean", "emn") for s in (0, 1)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    paths = write_reports(tmp_path)
    assert paths["losses-v"].stat().st_size > 5000
    recs = {r["defense"]: r for r in aggregate(rows)}
    assert recs["emn"]["train_losses"] == pytest.approx([1.5, 1.4, 1.3, 1.2, 1.1])
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "train_losses"})
                                                   for r in rows))
    assert "losses-v" not in write_reports(tmp_path)  # rows from before losses were kept: no plot


def test_adaptive_robustness_is_the_smallest_drop_under_the_same_countermeasure():
    from toolkit.reports import adaptive_robustness

    rows = [_row("clean", "none", 0, 0.80), _row("clean", "jpeg", 0, 0.60), _row("clean", "filter", 0, 0.75),
            _row("d", "none", 0, 0.30), _row("d", "jpeg", 0, 0.50), _row("d", "filter", 0, 0.70),
            _row("e", "none", 0, 0.70)]
    recs = aggregate(rows)
    robust = {a["defense"]: a for a in adaptive_robustness(recs)}
    assert set(robust) == {"d", "e"}  # the clean rows are the reference, not a defense
    assert robust["d"]["adaptive_robustness"] == pytest.approx(0.05) and robust["d"]["worst_column"] == "filter"
    assert robust["e"]["columns"] == 1 and robust["e"]["worst_column"] == "none"
    table = format_markdown(recs)
    assert "| d | +5.0 | filter | 3 |" in table and "| e |" not in table.split("Adaptive robustness")[1]
