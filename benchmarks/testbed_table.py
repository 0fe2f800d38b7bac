"""Compact tables of a testbed run (benchmarks/specs/testbed.yaml): one per victim, defenses x countermeasures,
each cell the mean clean-test accuracy over seeds ± std, with the drop against clean data under the same
countermeasure, and each defense's adaptive robustness (its smallest mean drop over the columns, and that column).
Reads one or more matrix run folders (e.g. one per seed, sharing a cache) and merges their rows.

    .venv/bin/python benchmarks/testbed_table.py runs/tb_s0 runs/tb_s1 runs/tb_s2 --out runs/testbed

``drops.md`` (also written) has the README's form: per victim, each cell the drop in points (clean accuracy
minus the defense's, same seed and countermeasure) as mean ± std over the seeds, and the adaptive robustness.
``loss-gap.md``: per victim and defense, the mean training loss of the fine-tune's first epoch on the release
minus that on the clean data (same seed, no countermeasure), in nats. Negative: the victim fits the release
faster than clean data from the start, i.e. the release's error-minimising shortcut transfers to that victim.
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
    (out / "drops.md").write_text(drop_tables(merged, cms, robust))
    (out / "loss-gap.md").write_text(loss_gap_table(merged))
    print(text)
    return 0


def drop_tables(rows, cms, robust) -> str:
    """Per victim: paired drops (points, clean minus defense per seed and column) as mean ± std over seeds,
    and the adaptive robustness from ``robust`` ((victim, defense) -> :func:`toolkit.reports.adaptive_robustness`
    entry)."""
    import statistics

    acc = {(r["victim"], r["defense"], r["countermeasure"], r["seed"]): r["accuracy"] for r in rows
           if r.get("accuracy") is not None}
    lines = ["Drop in points vs clean under the same countermeasure, paired per seed: mean ± std over seeds.", ""]
    for victim in dict.fromkeys(r["victim"] for r in rows):
        cols = [c for c in cms if any(k[0] == victim and k[2] == c for k in acc)]
        lines += [f"### victim {victim}", "", "| defense | " + " | ".join(cols) + " | adaptive robustness |",
                  "|---|" + "---|" * (len(cols) + 1)]
        clean = [f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}" for v in
                 ([100 * a for (vi, d, c, _), a in acc.items() if vi == victim and d == "clean" and c == col]
                  for col in cols)]
        lines.append("| clean accuracy (%) | " + " | ".join(clean) + " | |")
        for d in dict.fromkeys(k[1] for k in acc if k[0] == victim and k[1] not in ("clean", "zero-shot")):
            cells = []
            for col in cols:
                drops = [100 * (acc[(victim, "clean", col, seed)] - a) for (vi, dd, c, seed), a in acc.items()
                         if vi == victim and dd == d and c == col and (victim, "clean", col, seed) in acc]
                if not drops:
                    cells.append("")
                    continue
                sd = statistics.stdev(drops) if len(drops) > 1 else 0.0
                cells.append(f"{statistics.mean(drops):.1f} ± {sd:.1f}" + (f" [{len(drops)}]" if len(drops) < 3 else ""))
            a = robust.get((victim, d))
            cells.append(f"{100 * a['adaptive_robustness']:.1f} ({a['worst_column']})"
                         if a and a["adaptive_robustness"] is not None else "")
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def loss_gap_table(rows, epoch: int = 0) -> str:
    """Per victim and defense: first-epoch (``epoch``) mean training loss on the release minus on the clean data,
    paired per seed with no countermeasure, mean ± std over seeds in nats (rows without ``train_losses`` skipped)."""
    import statistics

    loss = {(r["victim"], r["defense"], r["seed"]): r["train_losses"][epoch] for r in rows
            if r.get("countermeasure") == "none" and len(r.get("train_losses") or []) > epoch}
    lines = [f"Training loss of epoch {epoch + 1} on the release minus on the clean data (nats), paired per seed, "
             "no countermeasure: mean ± std over seeds [seeds]. Negative: the release is easier to fit from the "
             "start (its shortcut transfers).", ""]
    for victim in dict.fromkeys(k[0] for k in loss):
        lines += [f"### victim {victim}", "", "| defense | loss gap (nats) |", "|---|---|"]
        for d in dict.fromkeys(k[1] for k in loss if k[0] == victim and k[1] != "clean"):
            gaps = [v - loss[(victim, "clean", seed)] for (vi, dd, seed), v in loss.items()
                    if vi == victim and dd == d and (victim, "clean", seed) in loss]
            if gaps:
                sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
                lines.append(f"| {d} | {statistics.mean(gaps):+.2f} ± {sd:.2f} [{len(gaps)}] |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
