"""Reports from matrix rows: Markdown and CSV tables (mean and spread over seeds, drop vs the clean
fine-tune, sanity warnings), heatmap PNGs of clean-test accuracy per defense x countermeasure and plots
of the attacker's training loss per defense, one per victim.

``mmguard report DIR`` re-renders them from ``DIR/rows.jsonl`` without recomputing anything.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from .metrics import METRICS

__all__ = ["aggregate", "write_reports", "format_markdown", "read_rows", "sanity_warnings", "adaptive_robustness"]



def _extra_columns() -> Tuple[str, ...]:
    """Per-cell numbers averaged over seeds besides accuracy: every stealth metric registered in ``METRICS``
    (read when called, so a plugin's metric gets a column), the fitted countermeasures' reports, the costs."""
    stealth = tuple(n for n in METRICS.names() if METRICS.get(n).kind != "answers")
    return (*stealth, "trigger_removed", "trigger_filter_threshold", "detection_auroc", "protect_seconds",
            "finetune_seconds", "peak_mib")


def read_rows(out: Union[str, Path]) -> List[Dict[str, Any]]:
    """The rows of a matrix run folder: ``rows.jsonl``, or the ``rows-shard-*.jsonl`` of its sharded workers."""
    out = Path(out)
    paths = [out / "rows.jsonl"] if (out / "rows.jsonl").is_file() else sorted(out.glob("rows-shard-*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{out}: no rows.jsonl (run `mmguard matrix` first)")
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One record per (victim, defense, countermeasure): accuracy mean/std over seeds, drops vs clean.

    ``drop_mean`` is taken per seed against the clean fine-tune (no defense, no
    countermeasure) of the same victim, then averaged; ``drop_same_cm_mean``
    against the clean data under the SAME countermeasure (what the protection
    itself costs the attacker once the countermeasure is paid for; None when that
    clean cell is missing). Error cells are kept with their first message and no
    numbers.
    """
    clean_cm = {(r["victim"], r["countermeasure"], r["seed"]): r["accuracy"] for r in rows
                if r["defense"] == "clean" and r.get("error") is None}
    clean = {(v, s): acc for (v, cm, s), acc in clean_cm.items() if cm == "none"}
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["victim"], r["defense"], r["countermeasure"]), []).append(r)
    out = []
    for (victim, defense, cm), rs in groups.items():
        ok = [r for r in rs if r.get("error") is None]
        rec: Dict[str, Any] = {"victim": victim, "defense": defense, "countermeasure": cm,
                               "threat_model": rs[0].get("threat_model"), "seeds": len(ok),
                               "errors": len(rs) - len(ok),
                               "error": next((r["error"] for r in rs if r.get("error")), None)}
        if ok:
            rec["accuracy_mean"], rec["accuracy_std"] = _mean_std([r["accuracy"] for r in ok])
            n = ok[0].get("n_test")
            rec["n_test"] = n
            # one seed has no spread: report the binomial standard error of one accuracy on n questions
            rec["accuracy_se"] = (math.sqrt(rec["accuracy_mean"] * (1 - rec["accuracy_mean"]) / n)
                                  if n else None)
            drops = [clean[(victim, r["seed"])] - r["accuracy"] for r in ok if (victim, r["seed"]) in clean]
            rec["drop_mean"] = _mean_std(drops)[0] if drops else None
            same = [clean_cm[(victim, cm, r["seed"])] - r["accuracy"] for r in ok
                    if (victim, cm, r["seed"]) in clean_cm]
            rec["drop_same_cm_mean"] = _mean_std(same)[0] if len(same) == len(ok) else None
            for key in _extra_columns():
                vals = [r[key] for r in ok if r.get(key) is not None]
                rec[key] = sum(vals) / len(vals) if vals else None
            chances = [r["chance"] for r in ok if r.get("chance") is not None]
            rec["chance"] = max(chances) if chances else None
            curves = [r["train_losses"] for r in ok if r.get("train_losses")]
            if curves and len({len(c) for c in curves}) == 1:  # the attacker's loss per epoch, mean over seeds
                rec["train_losses"] = [sum(c[e] for c in curves) / len(curves) for e in range(len(curves[0]))]
        out.append(rec)
    return out


def adaptive_robustness(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (victim, defense): the smallest ``drop_same_cm_mean`` over every countermeasure column (``none``
    included) and the column that gives it, i.e. what the protection still costs an attacker who picks the
    best countermeasure in the matrix (points in [0, 1] units, like the drops; None when no column has one).
    Records: :func:`aggregate` output; the clean and zero-shot rows are skipped."""
    out: List[Dict[str, Any]] = []
    keys = sorted({(r["victim"], r["defense"]) for r in records if r["defense"] not in ("clean", "zero-shot")})
    for victim, defense in keys:
        cols = [(r["drop_same_cm_mean"], r["countermeasure"]) for r in records
                if r["victim"] == victim and r["defense"] == defense and r.get("drop_same_cm_mean") is not None]
        worst = min(cols) if cols else (None, None)
        out.append({"victim": victim, "defense": defense, "adaptive_robustness": worst[0], "worst_column": worst[1],
                    "columns": len(cols)})
    return out


def sanity_warnings(records: List[Dict[str, Any]], victim: str) -> List[str]:
    """What makes a victim's table unreadable: a clean fine-tune at or near chance (the majority answer's
    share of the test split: drops cannot show), or a test split so small that a few points are noise."""
    out = []
    clean = next((r for r in records if r["victim"] == victim and r["defense"] == "clean"
                  and r["countermeasure"] == "none" and r.get("accuracy_mean") is not None), None)
    if clean is not None and clean.get("chance") is not None and clean["accuracy_mean"] <= clean["chance"] + 0.05:
        out.append(f"the clean fine-tune reaches {100 * clean['accuracy_mean']:.1f}%, within 5 points of chance "
                   f"({100 * clean['chance']:.1f}%, always giving the most common answer): the victim learned "
                   "nearly nothing, so no drop can show; train longer, on more data, or use a pretrained victim")
    if clean is not None and clean.get("n_test"):
        se = math.sqrt(max(clean["accuracy_mean"] * (1 - clean["accuracy_mean"]), 0.01) / clean["n_test"])
        if clean["n_test"] < 200:
            out.append(f"only n = {clean['n_test']} test questions: a difference between two cells under about "
                       f"{100 * 2.8 * se:.0f} points (2 x the SE of a difference) may be noise; use more test "
                       "samples or seeds")
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_markdown(records: List[Dict[str, Any]]) -> str:
    """Per-victim Markdown tables (accuracy in %, drop in points)."""
    lines: List[str] = []
    for victim in sorted({r["victim"] for r in records}):
        lines += [f"#### victim: {victim}", "",
                  "| defense | countermeasure | threat model | clean-test acc. (%) | drop (points) "
                  "| drop vs clean, same countermeasure | seeds | PSNR (dB) | SSIM | trigger words | protect s |",
                  "|" + "---|" * 11]
        for r in (r for r in records if r["victim"] == victim):
            if r.get("accuracy_mean") is None:
                acc = f"error: {r['error']}"
            elif r["seeds"] > 1:
                acc = f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"
            elif r.get("accuracy_se") is not None:
                acc = f"{100 * r['accuracy_mean']:.1f} (SE {100 * r['accuracy_se']:.1f})"
            else:
                acc = f"{100 * r['accuracy_mean']:.1f}"
            drop = None if r.get("drop_mean") is None else 100 * r["drop_mean"]
            same = None if r.get("drop_same_cm_mean") is None else 100 * r["drop_same_cm_mean"]
            lines.append(f"| {r['defense']} | {r['countermeasure']} | {r['threat_model']} | {acc} | "
                         f"{_fmt(drop, '+.1f')} | {_fmt(same, '+.1f')} | {r['seeds']} | {_fmt(r.get('psnr'), '.1f')} | "
                         f"{_fmt(r.get('ssim'), '.3f')} | {_fmt(r.get('trigger_length'), '.1f')} | "
                         f"{_fmt(r.get('protect_seconds'), '.0f')} |")
        robust = [a for a in adaptive_robustness(records) if a["victim"] == victim and a["columns"] > 1]
        if robust:
            lines += ["", "Adaptive robustness: the smallest drop vs clean under the same countermeasure over "
                          "every column (what the protection still costs the best-informed attacker here).", "",
                      "| defense | adaptive robustness (points) | worst column | columns |", "|---|---|---|---|"]
            lines += [f"| {a['defense']} | {_fmt(None if a['adaptive_robustness'] is None else 100 * a['adaptive_robustness'], '+.1f')} "
                      f"| {a['worst_column'] or '-'} | {a['columns']} |" for a in robust]
        lines += ["", *(f"**Warning:** {w}." for w in sanity_warnings(records, victim))]
        n = sorted({r["n_test"] for r in records if r["victim"] == victim and r.get("n_test")})
        lines += ["", f"Accuracy: mean ± std over seeds; with one seed, (SE) is the binomial standard error of one "
                      f"accuracy on the n = {', '.join(map(str, n)) or '?'} test questions (a difference of two "
                      "cells has about 1.4x that).", ""]
    return "\n".join(lines)


def _heatmap(records: List[Dict[str, Any]], victim: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recs = [r for r in records if r["victim"] == victim]
    defenses = list(dict.fromkeys(r["defense"] for r in recs))
    cms = list(dict.fromkeys(r["countermeasure"] for r in recs))
    grid = np.full((len(defenses), len(cms)), np.nan)
    present = {(r["defense"], r["countermeasure"]) for r in recs}  # zero-shot rows have no countermeasure cells
    for r in recs:
        if r.get("accuracy_mean") is not None:
            grid[defenses.index(r["defense"]), cms.index(r["countermeasure"])] = 100 * r["accuracy_mean"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cms), 1.0 + 0.5 * len(defenses)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cms)), cms, rotation=40, ha="right")
    ax.set_yticks(range(len(defenses)), defenses)
    for i in range(len(defenses)):
        for j in range(len(cms)):
            if (defenses[i], cms[j]) not in present:
                continue
            text = "err" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if np.isnan(grid[i, j]) or grid[i, j] < 60
                    else "black", fontsize=8)
    ax.set_title(f"clean-test accuracy (%), victim {victim}")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # long labels and titles stay inside
    plt.close(fig)


def write_reports(out: Union[str, Path]) -> Dict[str, Path]:
    """Render ``results.md``, ``results.csv`` and ``heatmap-<victim>.png`` from ``out/rows.jsonl``."""
    out = Path(out)
    records = aggregate(read_rows(out))
    paths = {"markdown": out / "results.md", "csv": out / "results.csv"}
    paths["markdown"].write_text(format_markdown(records))
    keys = ["victim", "defense", "countermeasure", "threat_model", "accuracy_mean", "accuracy_std", "drop_mean",
            "drop_same_cm_mean", "seeds", "n_test", "accuracy_se", "errors", "error", *_extra_columns()]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    for victim in sorted({r["victim"] for r in records}):
        paths[f"heatmap-{victim}"] = out / f"heatmap-{victim}.png"
        _heatmap(records, victim, paths[f"heatmap-{victim}"])
        if any(r.get("train_losses") for r in records if r["victim"] == victim):
            paths[f"losses-{victim}"] = out / f"losses-{victim}.png"
            _loss_plot(records, victim, paths[f"losses-{victim}"])
    return paths


def _loss_plot(records: List[Dict[str, Any]], victim: str, path: Path) -> None:
    """The attacker's training loss per epoch for every defense without countermeasure (the paper's Fig. 4:
    error-minimising data falls below the clean curve, the -Max variants stay above it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in records if r["victim"] == victim and r["countermeasure"] == "none" and r.get("train_losses")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in recs:
        clean = r["defense"] == "clean"
        ax.plot(range(1, len(r["train_losses"]) + 1), r["train_losses"], label=r["defense"],
                color="black" if clean else None, linewidth=2.5 if clean else 1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("attacker's training loss (mean per epoch)")
    ax.set_yscale("log")
    ax.set_title(f"fine-tuning victim {victim} on each release (no countermeasure)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
