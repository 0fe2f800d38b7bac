"""EMN x countermeasures on the digits VQA data with tiny LLaVA models (CPU, ~20 minutes).

Reproduces the README's countermeasure table:

    .venv/bin/python benchmarks/countermeasure_table.py --out runs/countermeasures

Setup: the 1,198 digits training samples are split (seeded, stratified) into the
data owner's set (protected with EMN and released) and a disjoint set of clean
images the attacker owns (used to fit LightShed, train the purifier and mix in).
Surrogate, attacker's LightShed surrogate and victim are tiny LLaVAs with
different random initialisations (gray-box). Each cell fine-tunes a fresh
victim (full, 15 epochs) and reports accuracy on the CLEAN test split.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/countermeasures")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--attacker-share", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from toolkit import COUNTERMEASURES, DEFENSES, FineTune, load_digits_vqa, load_surrogate
    from toolkit.attacks import train_purifier
    from toolkit.matrix import load_spec

    # the digits demo's defenses (the packaged demo now runs on the testbed)
    digits_demo = load_spec(Path(__file__).parent / "specs" / "digits_demo.yaml")
    demo_defenses = [(d.label, d.name, dict(d.config)) for d in digits_demo.defenses if d.name is not None]
    from toolkit.metrics import evaluate_answers
    from toolkit.release import package_versions
    from toolkit.surrogates.tiny import build_tiny_llava

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {name: build_tiny_llava(out / "models" / name, seed=seed)
              for name, seed in (("surrogate", args.seed), ("victim", args.seed + 1), ("attacker", args.seed + 2))}
    train, test = load_digits_vqa(image_size=32, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train))
    n_att = int(round(args.attacker_share * len(train)))
    owner = train.replace_samples([train[i] for i in sorted(order[n_att:])], "owner")
    attacker_clean = train.replace_samples([train[i] for i in sorted(order[:n_att])], "attacker-clean")

    emn_config = dict(next(c for label, n, c in demo_defenses if label == "emn (class-wise)"))
    defense = DEFENSES.create("emn", seed=args.seed, **emn_config)
    t0 = time.perf_counter()
    protected = defense.protect(owner, [load_surrogate(models["surrogate"])], progress=True).dataset
    protect_seconds = time.perf_counter() - t0

    # Countermeasures that must be fitted on the attacker's own clean data.
    lightshed = COUNTERMEASURES.create("lightshed", seed=args.seed)
    lightshed.fit(DEFENSES.create("emn", seed=args.seed + 7, **emn_config), attacker_clean,
                  [load_surrogate(models["attacker"])])
    auroc = float(roc_auc_score(np.r_[np.ones(len(protected)), np.zeros(len(owner))],
                                np.r_[lightshed.score(protected), lightshed.score(owner)]))
    t0 = time.perf_counter()
    purifier_dir = train_purifier(attacker_clean, out / "purifier", epochs=30, seed=args.seed, progress=True)
    purifier_seconds = time.perf_counter() - t0

    cells = [
        ("none", None, None),
        ("jpeg q=10", COUNTERMEASURES.create("jpeg", quality=10), None),
        ("grayscale", COUNTERMEASURES.create("grayscale"), None),
        ("bit_depth 3", COUNTERMEASURES.create("bit_depth", bits=3), None),
        ("gaussian_blur sigma=1", COUNTERMEASURES.create("gaussian_blur", sigma=1.0), None),
        ("median_filter 3", COUNTERMEASURES.create("median_filter", size=3), None),
        ("resize 0.5", COUNTERMEASURES.create("resize", scale=0.5), None),
        ("rcp 0.125", COUNTERMEASURES.create("rcp", crop=0.125, seed=args.seed), None),
        ("diffusion_purification t*=0.1", COUNTERMEASURES.create("diffusion_purification", model=str(purifier_dir),
                                                                 t_star=0.1, seed=args.seed), None),
        ("lightshed", lightshed, None),
        ("mix_clean r=0.25", COUNTERMEASURES.create("mix_clean", ratio=0.25, seed=args.seed).fit(attacker_clean), None),
        ("heavy_augmentation", None, COUNTERMEASURES.create("heavy_augmentation")),
        ("adversarial_training eps=8/255 (5 steps)", None,
         COUNTERMEASURES.create("adversarial_training", eps=8 / 255, steps=5, step_size=2 / 255)),
    ]
    rows = []
    for train_name, train_set in (("clean", owner), ("emn (class-wise)", protected)):
        for label, data_side, training_side in cells:
            if train_name == "clean" and label not in ("none", "jpeg q=10", "adversarial_training eps=8/255 (5 steps)"):
                continue
            t0 = time.perf_counter()
            data = data_side(train_set) if data_side is not None else train_set
            victim = load_surrogate(models["victim"])
            FineTune(epochs=args.epochs, seed=args.seed)(victim, data, countermeasure=training_side)
            acc, _ = evaluate_answers(victim, test)
            rows.append({"training data": train_name, "countermeasure": label, "clean_test_accuracy": acc,
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    # Fine-tuning recipes as an attack axis, including a victim pretrained on a disjoint task
    # (parity of the attacker's own clean digit images) before LoRA on the released data.
    parity = {s.id: s for s in load_digits_vqa(image_size=32, seed=args.seed, task="parity")[0]}
    parity_set = attacker_clean.replace_samples([parity[s.id] for s in attacker_clean], "attacker-parity")
    recipes = [("projector-only", {"mode": "projector"}, False), ("LoRA r=16", {"mode": "lora", "lora_rank": 16,
               "lora_alpha": 32, "lr": 5e-3}, False), ("pretrained (parity) + LoRA r=16",
               {"mode": "lora", "lora_rank": 16, "lora_alpha": 32, "lr": 5e-3}, True)]
    for train_name, train_set in (("clean", owner), ("emn (class-wise)", protected)):
        for label, ft_config, pretrain in recipes:
            t0 = time.perf_counter()
            victim = load_surrogate(models["victim"])
            if pretrain:
                FineTune(epochs=args.epochs, seed=args.seed)(victim, parity_set)
            FineTune(epochs=args.epochs, seed=args.seed, **ft_config)(victim, train_set)
            acc, _ = evaluate_answers(victim, test)
            rows.append({"training data": train_name, "countermeasure": f"recipe: {label}",
                         "clean_test_accuracy": acc, "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"rows": rows, "lightshed_auroc": auroc, "protect_seconds": protect_seconds,
               "purifier_seconds": purifier_seconds, "owner_samples": len(owner),
               "attacker_clean_samples": len(attacker_clean), "test_samples": len(test),
               "versions": package_versions()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    lines = ["| training data | countermeasure | clean-test acc. (%) |", "|---|---|---|"]
    lines += [f"| {r['training data']} | {r['countermeasure']} | {100 * r['clean_test_accuracy']:.1f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + f"\n\nLightShed detection AUROC (protected vs clean): {auroc:.3f}\n")
    print("\n".join(lines))
    print(f"LightShed AUROC {auroc:.3f}; EMN {protect_seconds:.0f} s; purifier {purifier_seconds:.0f} s")


if __name__ == "__main__":
    main()
