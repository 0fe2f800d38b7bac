"""Every defense on the digits VQA data with tiny LLaVA victims (CPU; about 1-2 hours for all rows).

Reproduces the README's defense table (baselines, issue 4) and MMGuard ablation (issue 5):

    .venv/bin/python benchmarks/defense_table.py --out runs/defenses
    .venv/bin/python benchmarks/defense_table.py --out runs/defenses --rows emn_class,mmguard_crs

Setup: the 1,198 digits training samples are protected against a tiny LLaVA
surrogate (random init, seed 0) trained from scratch inside the min-min loop;
each protected set trains fresh victims (full fine-tune, 15 epochs, cosine
LR): a white-box one (the surrogate's own initial weights) and, for the
baselines, a gray-box one (same family, other init, seed 1). Accuracy is on
the 599 CLEAN test digits. The black-box row protects against an ensemble of
tiny Qwen2-VL and Gemma 3 surrogates and evaluates the LLaVA victims. Rows are appended to
``rows.jsonl`` as they finish; a rerun skips finished rows (resume).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# The EMN schedules calibrated for from-scratch surrogates on this task (see the README).
CLASS = {"granularity": "class", "rounds": 40, "train_steps": 10, "pgd_steps": 10, "pgd_fraction": 0.2,
         "restart_every": 5, "restart_init": "random"}
SAMPLE = {"granularity": "sample", "rounds": 30, "train_steps": 20, "pgd_steps": 5, "restart_every": 3,
          "stop_clean_accuracy": 0.3}
# MMGuard on a from-scratch surrogate: the sample-wise schedule instead of the paper's
# LoRA-on-a-pretrained-LVLM one, triggers of 5 words searched every 5 rounds.
MMG = {**SAMPLE, "train_unit": "steps", "batch_size": 64, "rounds": 20, "train_mode": "full", "lr": 2e-3, "step_size": 2 / 255, "init": "zeros",
       "stop_accuracy": 0.99, "max_trigger_tokens": 5, "trigger_candidates": 8, "trigger_every": 5,
       "lambda_bind": 2.0}
TRIG = {"max_trigger_tokens": 5, "trigger_candidates": 16, "trigger_rounds": 30, "trigger_fraction": 0.2}

BOTH, WHITE = ("white", "gray"), ("white",)
# row -> (registry name, config, surrogate families (None = the tiny LLaVA), victims evaluated)
ROWS = {
    "clean": (None, {}, None, BOTH),
    "random_noise": ("random_noise", {}, None, BOTH),
    "emn_class": ("emn", CLASS, None, BOTH),
    "emn_sample": ("emn", SAMPLE, None, BOTH),
    "tue": ("tue", {**SAMPLE, "step_size": 2 / 255}, None, BOTH),
    "rem": ("rem", {**SAMPLE, "adv_steps": 1}, None, BOTH),
    "mem": ("mem", {**SAMPLE, **TRIG}, None, BOTH),
    # the MMGuard ablation is white-box (the victim starts from the surrogate's initial weights)
    "mmguard_image": ("mmguard_image", MMG, None, WHITE),
    "mmguard_text": ("mmguard_text", MMG, None, WHITE),
    "mmguard_multimodal": ("mmguard_multimodal", MMG, None, WHITE),
    "mmguard_bph": ("mmguard_bph", MMG, None, WHITE),
    "mmguard_crs": ("mmguard_crs", MMG, None, WHITE),
    "mmguard_bph_max": ("mmguard_bph_max", MMG, None, WHITE),
    "mmguard_crs_max": ("mmguard_crs_max", MMG, None, WHITE),
    # black-box: an ensemble of two other families protects against the tiny LLaVA victims
    # (BPH and 10 rounds: two surrogates of other families cost about twice a tiny LLaVA each)
    "mmguard_bph_blackbox": ("mmguard_bph", {**MMG, "rounds": 10}, ("qwen2_vl", "gemma3"), BOTH),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/defenses")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use at most this many digits (quick check)")
    args = parser.parse_args()

    import torch

    from toolkit import DEFENSES, FineTune, load_digits_vqa, load_surrogate
    from toolkit.metrics import PSNR, SSIM, evaluate_answers, mechanism_metrics
    from toolkit.release import package_versions
    from toolkit.surrogates import Ensemble
    from toolkit.surrogates.tiny import build_tiny

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = {json.loads(line)["row"] for line in rows_file.read_text().splitlines()} if rows_file.exists() else set()
    models = {name: build_tiny(fam, out / "models" / name, seed=seed) for name, fam, seed in
              (("surrogate", "llava", args.seed), ("victim_gray", "llava", args.seed + 1),
               ("qwen2_vl", "qwen2_vl", args.seed + 2), ("gemma3", "gemma3", args.seed + 3))}
    train, test = load_digits_vqa(image_size=32, seed=args.seed, limit=args.limit)
    for row in args.rows.split(","):
        if row in done:
            print(f"{row}: done, skipped")
            continue
        name, config, family, victims = ROWS[row]
        released, seconds, info, mech = train, 0.0, {}, {}
        if name is not None:
            if family:
                surrogate = Ensemble([load_surrogate(models[f]) for f in family])
            else:
                surrogate = load_surrogate(models["surrogate"])
            protection = DEFENSES.create(name, seed=args.seed, **config).protect(
                train, [surrogate], progress=True, checkpoint=out / "checkpoints" / f"{row}.pt")
            released, seconds, info = protection.dataset, protection.seconds, protection.info
            if name.startswith("mmguard") or name == "mem":
                probe = load_surrogate(models["surrogate"])
                mech = mechanism_metrics(probe, list(train)[:128], list(released)[:128],
                                         tau_delta=getattr(protection, "config", {}).get("tau_delta", 0.1))
        result = {"row": row, "defense": name or "clean", "surrogates": list(family or ["llava"]),
                  "protect_seconds": seconds, "rounds": info.get("rounds"), "converged": info.get("converged"),
                  "psnr_db": PSNR()(train, released) if name else None,
                  "ssim": SSIM()(train, released) if name else None,
                  "trigger_words": (sum(len(s.meta["trigger"]["words"]) for s in released) / len(released)
                                    if released[0].meta.get("trigger") else 0.0),
                  "tv": mech.get("tv"), "tv_bound": mech.get("tv_bound"), "eta": mech.get("eta"),
                  "bound_holds": mech.get("bound_holds"),
                  "mass_answer_to_trigger": mech.get("mass_answer_to_trigger"),
                  "mass_answer_to_perturbation": mech.get("mass_answer_to_perturbation"),
                  "mass_answer_to_perturbation_clean": mech.get("mass_answer_to_perturbation_clean")}
        folders = {"white": models["surrogate"], "gray": models["victim_gray"]}
        for victim_name, folder in ((v, folders[v]) for v in victims):
            victim = load_surrogate(folder)
            t0 = time.perf_counter()
            FineTune(epochs=args.epochs, seed=args.seed)(victim, released, progress=True)
            acc, _ = evaluate_answers(victim, test)
            result[f"acc_{victim_name}"] = acc
            result[f"finetune_seconds_{victim_name}"] = time.perf_counter() - t0
        result["versions"] = package_versions()
        result["torch_threads"] = torch.get_num_threads()
        with open(rows_file, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "versions"}))
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    (out / "table.md").write_text(format_table(rows) + "\n")
    print(format_table(rows))


def format_table(rows) -> str:
    """Markdown table of the rows (accuracy in %, drop vs the clean row in points)."""
    clean = next((r for r in rows if r["row"] == "clean"), None)
    head = ("| row | surrogate(s) | white-box acc. (%) | drop (pts) | gray-box acc. (%) | drop (pts) | PSNR | SSIM | "
            "trigger words | TV | TV bound | protect s |")
    lines = [head, "|" + "---|" * 12]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    for r in rows:
        white, gray = r.get("acc_white"), r.get("acc_gray")
        drop_w = None if clean is None or white is None else 100 * (clean["acc_white"] - white)
        drop_g = None if clean is None or gray is None else 100 * (clean["acc_gray"] - gray)
        lines.append(f"| {r['row']} | {'+'.join(r['surrogates']) if r['defense'] not in ('clean', 'random_noise') else '-'} | "
                     f"{f(white and 100 * white, '.1f')} | {f(drop_w, '+.1f')} | {f(gray and 100 * gray, '.1f')} | "
                     f"{f(drop_g, '+.1f')} | "
                     f"{f(r['psnr_db'], '.1f')} | {f(r['ssim'], '.3f')} | {r['trigger_words']:.1f} | "
                     f"{f(r['tv'], '.3f')} | {f(r['tv_bound'], '.3f')} | {r['protect_seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
