"""The demo: the whole slice on the embedded digits data with tiny LLaVA models.

clean / random noise / EMN (each without and with JPEG-10) -> unauthorized
full fine-tune of a fresh victim -> accuracy on the CLEAN test split.

The surrogate and the victim are two tiny LLaVAs with different random
initialisations (gray-box: same family, other weights). Everything runs on CPU
in a few minutes; nothing is downloaded.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from .attacks import COUNTERMEASURES, FineTune
from .defenses import DEFENSES
from .digits import load_digits_vqa
from .metrics import PSNR, SSIM, LInf, evaluate_answers
from .release import package_versions, write_release
from .surrogates import load_surrogate
from .surrogates.tiny import build_tiny_llava

__all__ = ["run_demo", "DEMO_DEFENSES", "DEMO_COUNTERMEASURES", "format_markdown"]

log = logging.getLogger(__name__)

#: (label, registry name, config) of the demo's defenses; None = no protection.
DEMO_DEFENSES: Sequence = (
    ("clean", None, {}),
    ("random_noise", "random_noise", {}),
    # Class-wise EMN; every 5 rounds the surrogate restarts from a NEW random init, so the noise
    # cannot lean on one initialisation's features and transfers to the victim's (other) init.
    ("emn (class-wise)", "emn", {"granularity": "class", "rounds": 40, "train_steps": 10, "pgd_steps": 10,
                                 "pgd_fraction": 0.2, "restart_every": 5, "restart_init": "random"}),
    # Sample-wise EMN; every 3 rounds the surrogate restarts from its starting weights.
    ("emn (sample-wise)", "emn", {"granularity": "sample", "rounds": 30, "train_steps": 20, "pgd_steps": 5,
                                  "restart_every": 3, "stop_clean_accuracy": 0.3}),
)
#: (label, registry name, config) of the demo's countermeasures; None = no countermeasure.
DEMO_COUNTERMEASURES: Sequence = (("none", None, {}), ("jpeg-10", "jpeg", {"quality": 10}))

COLUMNS = ("defense", "countermeasure", "clean_test_accuracy", "drop_vs_clean", "psnr_db", "ssim", "linf_255",
           "protect_seconds", "finetune_seconds")


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    """Render result rows as a Markdown table (accuracy and drop in percent / points)."""
    head = "| defense | countermeasure | clean-test acc. (%) | drop (points) | PSNR (dB) | SSIM | L_inf (/255) | protect s | fine-tune s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append("| {defense} | {countermeasure} | {acc:.1f} | {drop:+.1f} | {psnr} | {ssim} | {linf} | {ps:.0f} | {fs:.0f} |".format(
            defense=r["defense"], countermeasure=r["countermeasure"], acc=100 * r["clean_test_accuracy"],
            drop=100 * r["drop_vs_clean"], psnr="-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}",
            ssim="-" if r["ssim"] is None else f"{r['ssim']:.3f}",
            linf="-" if r["linf_255"] is None else f"{r['linf_255']:.0f}",
            ps=r["protect_seconds"], fs=r["finetune_seconds"]))
    return "\n".join(lines)


def run_demo(out: Path, *, epochs: int = 15, seed: int = 0, limit: int = 0, progress: bool = True,
             defenses: Optional[Sequence[str]] = None, write_releases: bool = True) -> List[Dict[str, Any]]:
    """Run the demo matrix and write ``results.csv``, ``results.md``, ``results.json`` into ``out``.

    Args:
        out: output folder (models, releases and tables go here).
        epochs: victim fine-tuning epochs.
        seed: seed for the data split, defenses and fine-tuning order.
        limit: if > 0, use at most this many digits samples (quick runs, tests).
        defenses: labels of :data:`DEMO_DEFENSES` to run (default: all).
        write_releases: also write each protected training set as a release folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    surrogate_dir = build_tiny_llava(out / "models" / "surrogate", seed=seed)
    victim_dir = build_tiny_llava(out / "models" / "victim", seed=seed + 1)
    surrogate = load_surrogate(surrogate_dir)
    train, test = load_digits_vqa(image_size=surrogate.image_size[0], seed=seed, limit=limit)
    chosen = [d for d in DEMO_DEFENSES if defenses is None or d[0] in defenses]
    rows: List[Dict[str, Any]] = []
    clean_acc = None
    cells = [(d, c) for d in chosen for c in DEMO_COUNTERMEASURES]
    bar = tqdm(total=len(cells), desc="demo cells", disable=not progress)
    for label, name, config in chosen:
        protect_seconds = 0.0
        released = train
        if name is not None:
            defense = DEFENSES.create(name, seed=seed, **config)
            protection = defense.protect(train, [surrogate], progress=progress)
            released, protect_seconds = protection.dataset, protection.seconds
            if write_releases:
                write_release(protection, out / "releases" / label.replace(" ", "_").replace("(", "").replace(")", ""),
                              overwrite=True)
            log.info("%s: %s", label, {k: v for k, v in protection.info.items() if k != "history"})
        stealth = {"psnr_db": None, "ssim": None, "linf_255": None}
        if name is not None:
            stealth = {"psnr_db": PSNR()(train, released), "ssim": SSIM()(train, released),
                       "linf_255": max(LInf().pair(a.image, b.image) for a, b in zip(train, released)) * 255}
        for cm_label, cm_name, cm_config in DEMO_COUNTERMEASURES:
            training_set = COUNTERMEASURES.create(cm_name, **cm_config)(released) if cm_name else released
            victim = load_surrogate(victim_dir)
            ft = FineTune(epochs=epochs, seed=seed)(victim, training_set, progress=progress)
            acc, _ = evaluate_answers(victim, test)
            if label == "clean" and cm_label == "none":
                clean_acc = acc
            rows.append({"defense": label, "countermeasure": cm_label, "clean_test_accuracy": acc,
                         "drop_vs_clean": (clean_acc - acc) if clean_acc is not None else 0.0, **stealth,
                         "protect_seconds": protect_seconds, "finetune_seconds": ft.seconds,
                         "threat_model": "gray-box", "train_samples": len(train), "test_samples": len(test)})
            bar.update(1)
    bar.close()
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(format_markdown(rows) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "versions": package_versions(),
                                                  "epochs": epochs, "seed": seed}, indent=2))
    return rows
