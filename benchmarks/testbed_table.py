"""Compact tables of a testbed run (benchmarks/specs/testbed.yaml): one per victim, defenses x countermeasures,
each cell the mean clean-test accuracy over seeds ± std, with the drop against clean data under the same
countermeasure, and each defense's adaptive robustness (its smallest mean drop over the columns, and that column).
Reads one or more matrix run folders (e.g. one per seed, sharing a cache) and merges their rows.

    .venv/bin/python benchmarks/testbed_table.py runs/tb_s0 runs/tb_s1 runs/tb_s2 --out runs/testbed
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from toolkit.reports import adaptive_robustness, aggregate, read_rows, write_reports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="matrix run folders (their rows.jsonl are merged)")
    parser.add_argument("--out", required=True, help="folder for the merged rows.jsonl, results.* and heatmaps")
    args = parser.parse_args(argv)
    rows = [r for run in args.runs for r in read_rows(run)]
    seen, merged = set(), []
    for r in rows:  # a cell present in two folders (same seed) counts once
        key = (r["seed"], r["victim"], r["defense"], r["countermeasure"])
        if key not in seen:
            seen.add(key)
            merged.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in merged))
    write_reports(out)
    records = aggregate(merged)
    robust = {(a["victim"], a["defense"]): a for a in adaptive_robustness(records)}
    cms = list(dict.fromkeys(r["countermeasure"] for r in records if r["defense"] not in ("zero-shot",)))
    lines = ["Clean-test accuracy (%): mean ± std over seeds (a single value: one seed); in parentheses the "
             "change against the clean data under the same countermeasure, in points.", ""]
    for victim in dict.fromkeys(r["victim"] for r in records):
        recs = {(r["defense"], r["countermeasure"]): r for r in records if r["victim"] == victim}
        seen = list(dict.fromkeys(d for d, _ in recs))  # zero-shot and clean first, then as the rows came
        defenses = [d for d in ("zero-shot", "clean") if d in seen] + [d for d in seen if d not in ("zero-shot", "clean")]
        threat = next((r["threat_model"] for r in records if r["victim"] == victim
                       and r["threat_model"] not in (None, "-")), "-")
        lines += [f"### victim {victim} ({threat})", "",
                  "| defense | " + " | ".join(cms) + " | adaptive robustness: smallest drop, pt (worst column) |",
                  "|---|" + "---|" * (len(cms) + 1)]
        for d in defenses:
            cells = []
            for cm in cms:
                r = recs.get((d, cm))
                if r is None:
                    cells.append("")
                elif r.get("accuracy_mean") is None:
                    cells.append("error")
                else:
                    cell = (f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}" if r["seeds"] > 1
                            else f"{100 * r['accuracy_mean']:.1f}")
                    if d not in ("clean", "zero-shot") and r.get("drop_same_cm_mean") is not None:
                        cell += f" ({-100 * r['drop_same_cm_mean']:+.1f})"
                    if r["seeds"] != max(x["seeds"] for x in recs.values()):
                        cell += f" [{r['seeds']} seed{'s' if r['seeds'] != 1 else ''}]"
                    cells.append(cell)
            a = robust.get((victim, d))
            cells.append(f"{100 * a['adaptive_robustness']:+.1f} ({a['worst_column']})"
                         if a and a["adaptive_robustness"] is not None else "")
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "testbed-table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
