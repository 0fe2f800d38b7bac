"""Mechanism evidence that can fail: MMGuard's attention routing vs a random control on fine-tuned victims.

    .venv/bin/python benchmarks/mechanism_evidence.py --out runs/mechanism [--seeds 0,1,2] [--variants bph,crs]

Setup (issue 14, item 4): the testbed's ``scenes`` data (benchmarks/specs/testbed.yaml, smaller: ``--n-train``
training samples, all protected, ``--n-test`` clean test samples; a new draw per seed). The owner protects the
training set with MMGuard-``variant`` against the zoo surrogate llava-a with the testbed's schedule. The random
control (:func:`toolkit.metrics.mechanism_evidence.random_control`) gives the same samples random admissible
trigger words of the same length at the same position and uniform noise in the same eps. The gray-box attacker
LoRA-tunes llava-b (the testbed's ``finetune:`` recipe, same seed) on each release: clean, protected, control.
``mechanism_metrics`` then runs on the first ``--measure`` training samples, for every victim (the untuned base
llava-b and each tuned one) and every (clean, released) pair; accuracy is on the clean test split.

Writes ``results.json`` (every victim x pair, per seed, plus accuracies and timings) and ``table.md``;
finished seeds are kept in ``rows.jsonl`` and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

SPEC = Path(__file__).parent / "specs" / "testbed.yaml"
#: rows of the table: (victim, pair) and what they mean; {v} = each protected variant
MAIN_ROWS = [("base", "{v}", "untuned llava-b, (clean, protected)"),
             ("clean", "{v}", "clean-tuned, (clean, protected)"),
             ("{v}", "{v}", "tuned on protected, (clean, protected)"),
             ("base", "random-{v}", "untuned llava-b, (clean, random)"),
             ("clean", "random-{v}", "clean-tuned, (clean, random)"),
             ("random-{v}", "random-{v}", "tuned on random, (clean, random)")]
COLUMNS = [("answer_to_trigger", "a->trig"), ("answer_to_perturbation", "a->pert"),
           ("answer_to_perturbation_clean", "a->pert (clean in)"), ("trigger_to_perturbation", "trig->pert"),
           ("answer_to_other_image", "a->other img"), ("answer_to_other_image_clean", "a->other img (clean in)"),
           ("answer_to_text", "a->text"), ("answer_to_text_clean", "a->text (clean in)"), ("tv", "TV"),
           ("eta", "eta_gamma"), ("tv_bound", "bound_gamma"), ("eta_delta", "eta_delta"),
           ("tv_bound_delta", "bound_delta"), ("bound_holds_delta", "holds_delta")]

#: Fig. 9's categories (paper: the first three rise, the fourth falls on the victim tuned on protected data)
CONTRASTS = [("answer_to_trigger", "a->trig"), ("answer_to_perturbation", "a->pert"),
             ("trigger_to_perturbation", "trig->pert"), ("answer_to_other_image", "a->other img"),
             ("answer_to_text", "a->text"), ("tv", "TV")]


def run_seed(seed: int, args, spec) -> dict:
    """Protect, build the control, tune the victims and measure them all, for one seed (see the module doc)."""
    from toolkit import DEFENSES, FineTune
    from toolkit.datasets import DATASETS
    from toolkit.metrics import evaluate_answers, mechanism_metrics
    from toolkit.metrics.mechanism_evidence import fig9_summary, random_control
    from toolkit.surrogates import load_surrogate
    from toolkit.zoo import zoo_folder

    data_cfg = {k: v for k, v in spec["data"].items() if k not in ("source", "attacker_clean")}
    data_cfg.update(n_train=args.n_train, n_test=args.n_test, seed=seed)
    train, test = DATASETS.create(spec["data"]["source"], **data_cfg).build()
    configs = {d["name"]: d["config"] for d in spec["defenses"]}
    recipe = dict(spec["finetune"], epochs=args.epochs)
    surrogate_dir, victim_dir = zoo_folder("llava-a"), zoo_folder("llava-b")
    releases, info = {"clean": list(train)}, {"data": data_cfg, "finetune": recipe, "protect": {}}
    for v in args.variants:
        config = configs[f"mmguard_{v}"]
        defense = DEFENSES.create(f"mmguard_{v}", **{**config, "seed": seed})
        surrogate = load_surrogate(surrogate_dir)
        t0 = time.perf_counter()
        protection = defense.protect(train, [surrogate])
        released = list(protection.dataset)
        releases[v] = released
        releases[f"random-{v}"] = random_control(train, released, surrogate.trigger_vocabulary(),
                                                 defense.config.eps, seed=seed)
        info["protect"][v] = {"config": config, "seconds": time.perf_counter() - t0, "eps": defense.config.eps,
                              "tau_delta": defense.config.tau_delta,
                              "trigger_words": float(np.mean([len((s.meta.get("trigger") or {}).get("words") or [])
                                                              for s in released])),
                              "images_changed": float(np.mean([not np.array_equal(a.image, b.image)
                                                               for a, b in zip(released, train)]))}
        print(f"seed {seed}: protected {v} in {info['protect'][v]['seconds']:.0f} s", flush=True)
    victims, accuracy, tune_s = {"base": load_surrogate(victim_dir)}, {}, {}
    for name, data in releases.items():
        twin = next((n for n in victims if n != "base" and _same(releases[n], data)), None)
        if twin is not None:  # e.g. the controls of two variants with the same trigger lengths: one tune
            victims[name], tune_s[name] = victims[twin], 0.0
            print(f"seed {seed}: {name} is the same data as {twin}, victim shared", flush=True)
            continue
        victim = load_surrogate(victim_dir)
        t0 = time.perf_counter()
        FineTune(**{**recipe, "seed": seed})(victim, train.replace_samples(data, f"{train.name}-{name}"))
        tune_s[name] = time.perf_counter() - t0
        victims[name] = victim
        print(f"seed {seed}: tuned on {name} in {tune_s[name]:.0f} s", flush=True)
    for name, victim in victims.items():
        if name not in accuracy:
            with victim.frozen():
                accuracy[name] = evaluate_answers(victim, list(test))[0]
            for other, same in victims.items():
                if same is victim:
                    accuracy[other] = accuracy[name]
    m = args.measure
    tau = {f"random-{v}": info["protect"][v]["tau_delta"] for v in args.variants}
    tau.update({v: info["protect"][v]["tau_delta"] for v in args.variants})
    metrics = {}
    for vname, victim in victims.items():
        with victim.frozen():
            for pair in (p for p in releases if p != "clean"):
                res = mechanism_metrics(victim, releases["clean"][:m], releases[pair][:m], layers=args.layers,
                                        tau_delta=tau[pair])
                metrics[f"{vname}|{pair}"] = {"summary": fig9_summary(res), "per_layer": res}
    return {"seed": seed, "accuracy": accuracy, "finetune_seconds": tune_s, "metrics": metrics, **info}


def _same(a, b) -> bool:
    """Whether two releases are the same samples (questions and images)."""
    return len(a) == len(b) and all(x.question == y.question and np.array_equal(x.image, y.image)
                                    for x, y in zip(a, b))


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def format_table(rows, variants) -> str:
    """Markdown: per variant, the main (victim, pair) rows, mean ± std over seeds of each Fig. 9 category."""
    lines = []
    seeds = [r["seed"] for r in rows]
    acc_names = list(rows[0]["accuracy"])
    lines.append(f"Clean-test accuracy (%), seeds {seeds}: " + ", ".join(
        f"{n} {100 * np.mean([r['accuracy'][n] for r in rows]):.1f} ± {100 * np.std([r['accuracy'][n] for r in rows]):.1f}"
        for n in acc_names))
    lines.append("")
    for v in variants:
        lines.append(f"### MMGuard-{v.upper()} vs its random control (attention shares, layer 1; mean ± std over "
                     f"{len(rows)} seed(s))")
        lines.append("")
        lines.append("| victim, pair | " + " | ".join(c[1] for c in COLUMNS) + " |")
        lines.append("|---|" + "---|" * len(COLUMNS))
        for victim, pair, label in MAIN_ROWS:
            key = f"{victim.format(v=v)}|{pair.format(v=v)}"
            cells = []
            for col, _ in COLUMNS:
                vals = np.array([r["metrics"][key]["summary"][col] for r in rows], dtype=float)
                if np.isnan(vals).all():
                    cells.append("-")
                elif len(vals) > 1:
                    cells.append(f"{np.nanmean(vals):.3f} ± {np.nanstd(vals):.3f}")
                else:
                    cells.append(_fmt(float(vals[0])))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("### Fig. 9 contrasts: change from fine-tuning, tuned-on-release victim minus clean-tuned victim on "
                 "the same pairs (per-seed differences, mean ± std)")
    lines.append("")
    lines.append("| release | " + " | ".join(c[1] for c in CONTRASTS) + " |")
    lines.append("|---|" + "---|" * len(CONTRASTS))
    for v in variants:
        for release in (v, f"random-{v}"):
            cells = []
            for col, _ in CONTRASTS:
                d = np.array([r["metrics"][f"{release}|{release}"]["summary"][col]
                              - r["metrics"][f"clean|{release}"]["summary"][col] for r in rows], dtype=float)
                cells.append(f"{np.mean(d):+.3f} ± {np.std(d):.3f}" if len(d) > 1 else f"{d[0]:+.3f}")
            lines.append(f"| {release} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mechanism")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="bph", help="comma list of MMGuard variants (bph, crs)")
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--measure", type=int, default=96, help="training samples the mechanism is measured on")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]

    import torch
    import yaml

    torch.set_num_threads(args.threads)
    spec = yaml.safe_load(SPEC.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    key = {"variants": args.variants, "n_train": args.n_train, "n_test": args.n_test, "measure": args.measure,
           "layers": args.layers, "epochs": args.epochs}
    rows = [r for r in rows if r.get("key") == key]
    for seed in (int(s) for s in args.seeds.split(",")):
        if any(r["seed"] == seed for r in rows):
            print(f"seed {seed}: done, skipped")
            continue
        t0 = time.perf_counter()
        row = {**run_seed(seed, args, spec), "key": key}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        with open(rows_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed}: done in {row['seconds']:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps({"settings": key, "seeds": rows}, indent=1))
    table = format_table(rows, args.variants)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
