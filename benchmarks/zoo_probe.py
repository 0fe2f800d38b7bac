"""Probe pretraining recipes for the tiny model zoo (an experiment script, not a test).

For each recipe variant: build the zoo model (random init -> full pretraining on
the disjoint ``scenes_pretrain`` mix), score it zero-shot on the downstream
``scenes`` test split, LoRA-fine-tune it on a clean downstream training split
and score it again. One JSON line per (variant, downstream seed) in ``--out``.

    .venv/bin/python benchmarks/zoo_probe.py --variants probe.json --out runs/zoo_probe.jsonl
    # probe.json: [{"label": "base", "family": "llava", "arch": {...}, "data": {...}, "train": {...}}, ...]

A variant's ``"keep": FOLDER`` keeps the built model there (and reuses it when it is
there already); its ``"downstream"`` entry overrides the downstream dataset config. Fields left out of a variant come from the zoo recipe named by ``"base"`` (default
the first registered recipe of the variant's family). ``--jobs N`` runs N
variants in parallel processes (for a machine with many cores or a GPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def append_row(path, row: dict) -> None:
    """Append one JSON row to ``path`` (each row as soon as it is measured, so a run cut short keeps them)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def run_one(variant: dict, device: str, downstream: dict, loras: list, seeds, threads: int, out) -> list:
    """Build (or reuse) one variant's model, then for each downstream seed and LoRA recipe: zero-shot score,
    fine-tune, score again; each row is appended to ``out`` when measured and all are returned."""
    import torch

    torch.set_num_threads(threads)
    from toolkit.attacks.finetune import FineTune
    from toolkit.datasets import DATASETS
    from toolkit.surrogates import load_surrogate
    from toolkit.zoo import ZOO, ZooRecipe, build_zoo_model, read_card, score_by_type

    base = ZOO[variant["base"]] if "base" in variant else next(r for r in ZOO.values()
                                                               if r.family == variant.get("family", "llava"))
    fields = {f.name for f in dataclasses.fields(ZooRecipe)}
    recipe = dataclasses.replace(base, name=variant.get("label", base.name),
                                 **{k: v for k, v in variant.items() if k in fields and k != "name"})
    downstream = {**downstream, **variant.get("downstream", {})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = Path(variant["keep"]) if "keep" in variant else Path(tmp) / "model"
        if not (folder / "zoo_card.json").is_file():
            build_zoo_model(recipe, folder, device=device)
        build_s = time.perf_counter() - start
        card = read_card(folder)
        image_size = int(recipe.data.get("image_size", 48))
        for seed, lora in [(s, l) for s in seeds for l in loras]:
            config = {"image_size": image_size, **{k: v for k, v in downstream.items() if k != "name"}}
            train, test = DATASETS.create(downstream["name"], seed=seed, **config).build()
            model = load_surrogate(folder, device=device)
            zero = score_by_type(model, list(test), max_new_tokens=8)
            t0 = time.perf_counter()
            res = FineTune(seed=seed, **lora)(model, train)
            tuned = score_by_type(model, list(test), max_new_tokens=8)
            rows.append({"label": recipe.name, "recipe": recipe.to_dict(), "device": device,
                         "build_s": round(build_s, 1), "pretrain": card["pretrain_scores"],
                         "pretrain_losses": card["pretrain_epoch_losses"], "seed": seed,
                         "zero_shot": zero, "lora": tuned, "lora_s": round(time.perf_counter() - t0, 1),
                         "lora_losses": [round(x, 4) for x in res.epoch_losses], "lora_recipe": lora,
                         "downstream": downstream})
            print(json.dumps({k: rows[-1][k] for k in ("label", "seed", "build_s", "lora_s")}
                             | {"pre": card["pretrain_scores"], "zero": zero["all"], "lora_recipe": lora,
                                "lora": tuned}), flush=True)
            append_row(out, rows[-1])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", required=True, help="JSON file: a list of recipe variants")
    parser.add_argument("--out", required=True, help="JSONL file the rows are appended to")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per job")
    parser.add_argument("--seeds", default="0", help="downstream seeds, comma separated")
    parser.add_argument("--downstream", default=None,
                        help="downstream dataset config as JSON (default: toolkit.zoo.DOWNSTREAM, 3000 / 600 samples)")
    parser.add_argument("--lora", default='{"mode": "lora", "lora_rank": 16, "lora_alpha": 32, "lr": 2e-3, '
                                          '"epochs": 30, "batch_size": 32, "warmup": 0.05}',
                        help="one FineTune recipe as JSON, or a list of them (each is run)")
    parser.add_argument("--only", type=int, default=None, help="(internal) run variant number ONLY")
    args = parser.parse_args(argv)
    variants = json.loads(Path(args.variants).read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.only is not None or args.jobs == 1:
        chosen = [variants[args.only]] if args.only is not None else variants
        for v in chosen:
            try:
                loras = json.loads(args.lora)
                from toolkit.zoo import DOWNSTREAM

                downstream = json.loads(args.downstream) if args.downstream else {**DOWNSTREAM, "n_train": 3000,
                                                                                     "n_test": 600}
                run_one(v, args.device, downstream, loras if isinstance(loras, list) else [loras], seeds,
                        args.threads, args.out)
            except Exception as exc:  # an experiment script: record the failure and go on
                row = {"label": v.get("label"), "error": f"{type(exc).__name__}: {exc}"}
                print(row, flush=True)
                append_row(args.out, row)
        return 0
    pending = list(range(len(variants)))
    running = []
    base_cmd = [sys.executable, __file__, *[a for a in (argv or sys.argv[1:])]]
    while pending or running:
        while pending and len(running) < args.jobs:
            i = pending.pop(0)
            running.append(subprocess.Popen(base_cmd + ["--only", str(i)], env=dict(os.environ)))
        time.sleep(1)
        running = [p for p in running if p.poll() is None]
    return 0


if __name__ == "__main__":
    sys.exit(main())
