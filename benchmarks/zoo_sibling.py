"""Build a sibling of a zoo model: the same recipe with other seeds (an experiment script, not a test).

The sibling keeps the recipe's architecture, data mix, schedule and visual stage, and draws the weight
initialisation, the pretraining sample and the visual-stage sample from other seeds, as a real model family
has several checkpoints of one generation. It is the owner's same-generation surrogate of
``benchmarks/specs/testbed_sibling.yaml`` (the paper's gray-box pairs: one generation, other weights).

    .venv/bin/python benchmarks/zoo_sibling.py llava-d --out runs/zoo/llava-d-sib --threads 1
    # defaults: --seed 0 --data-seed 1000 --vision-seed 78 (llava-d uses 2 / 1002 / 77); 1,516 s on one thread

The folder is a normal zoo model folder (``save_pretrained`` + ``zoo_card.json``), loaded by a spec as
``{path: runs/zoo/llava-d-sib}``. Same arguments and thread count -> the same weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def sibling_recipe(base: str, seed: int, data_seed: int, vision_seed: int):
    """The zoo recipe ``base`` renamed ``{base}-sib`` with the given init, pretraining-sample and visual-stage
    seeds (the visual stage's seed only where the recipe has one)."""
    from toolkit.zoo import ZOO

    recipe = ZOO[base]
    if (seed, data_seed) == (recipe.seed, recipe.data.get("seed")):
        raise ValueError(f"seed {seed} and data seed {data_seed} are {base}'s own: a sibling needs other seeds")
    vision = {**recipe.vision, "seed": vision_seed} if recipe.vision else recipe.vision
    return dataclasses.replace(
        recipe, name=f"{base}-sib", seed=seed, data={**recipe.data, "seed": data_seed}, vision=vision,
        summary=f"{base}'s recipe, other init / pretraining / visual-stage samples (a same-generation surrogate)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="zoo recipe name, e.g. llava-d")
    parser.add_argument("--out", required=True, help="folder to build into (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    parser.add_argument("--data-seed", type=int, default=1000, help="pretraining-sample seed")
    parser.add_argument("--vision-seed", type=int, default=78, help="visual-stage sample seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    from toolkit.zoo import build_zoo_model

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    build_zoo_model(sibling_recipe(args.base, args.seed, args.data_seed, args.vision_seed), args.out,
                    device=args.device)
    print(f"built {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
