"""How much the demo's EMN effect depends on the defense seed (CPU, about 6 minutes per seed).

    .venv/bin/python benchmarks/emn_seed_check.py --seeds 1 --out runs/emn-seeds

Same data split, surrogate (tiny LLaVA, init seed 0) and victim (init seed 1) as the digits demo
(``benchmarks/specs/digits_demo.yaml``, formerly ``mmguard demo``);
only the EMN seed changes. Prints the victim's clean-test accuracy per (variant, seed).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--out", default="runs/emn-seeds")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    from toolkit import DEFENSES, FineTune, load_digits_vqa, load_surrogate
    from toolkit.matrix import load_spec

    # the digits demo's defenses (the packaged demo now runs on the testbed)
    digits_demo = load_spec(Path(__file__).parent / "specs" / "digits_demo.yaml")
    demo_defenses = [(d.label, d.name, dict(d.config)) for d in digits_demo.defenses if d.name is not None]
    from toolkit.metrics import evaluate_answers
    from toolkit.surrogates.tiny import build_tiny_llava

    out = Path(args.out)
    surrogate_dir = build_tiny_llava(out / "surrogate", seed=0)
    victim_dir = build_tiny_llava(out / "victim", seed=1)
    train, test = load_digits_vqa(image_size=32, seed=0)
    for seed in args.seeds:
        for label, name, config in demo_defenses:
            if name != "emn":
                continue
            protection = DEFENSES.create(name, seed=seed, **config).protect(train, [load_surrogate(surrogate_dir)])
            victim = load_surrogate(victim_dir)
            FineTune(epochs=args.epochs, seed=0)(victim, protection.dataset)
            acc, _ = evaluate_answers(victim, test)
            print(f"{label} seed {seed}: victim clean-test accuracy {100 * acc:.1f}% "
                  f"(protect {protection.seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
