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
