"""Building, caching and locating zoo models (see :mod:`toolkit.zoo.recipes`).

``build_zoo_model(name, out)`` runs a recipe end to end on CPU (or any device):
random-init tiny model with a tokenizer that knows the task words, full
pretraining on the recipe's dataset, a per-question-type score on its held-out
split, then ``save_pretrained`` (weights stored in float16 to keep the
packaged zoo small) and a ``zoo_card.json`` with the recipe, the scores
measured on the *saved* weights, the seconds and the sha256 of every file.

``zoo_folder(name)`` returns the packaged copy when the package ships it, else
the on-demand cache (``$MMGUARD_ZOO_CACHE`` or ``~/.cache/mmguard/zoo``),
building it there once if asked to.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..release import sha256_file
from .recipes import TOKENIZER_CORPUS, ZOO, ZooRecipe, recipe_hash

__all__ = ["build_zoo_model", "zoo_folder", "packaged_folder", "cache_root", "score_by_type", "tokenizer_corpus",
           "read_card", "CARD"]

log = logging.getLogger(__name__)

#: file name of the model card next to the weights
CARD = "zoo_card.json"


def tokenizer_corpus(image_size: int, n: int = 600) -> List[str]:
    """Question + answer lines of the task family (deterministic), for training a zoo tokenizer."""
    from ..datasets import DATASETS

    lines: List[str] = []
    for name in TOKENIZER_CORPUS:
        train, _ = DATASETS.create(name, n_train=n, n_test=1, image_size=image_size, seed=12345).build()
        lines.extend(f"{s.question} {s.answer}" for s in train)
    return lines


def score_by_type(model, samples: Sequence, max_new_tokens: int = 24, batch_size: int = 64) -> Dict[str, float]:
    """Greedy-answer accuracy of ``model`` on ``samples``, overall (``"all"``) and per ``meta["qtype"]``."""
    from ..metrics import evaluate_answers
    from ..metrics.accuracy import answer_matches

    _, preds = evaluate_answers(model, samples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    hits: Dict[str, List[bool]] = defaultdict(list)
    for pred, sample in zip(preds, samples):
        ok = answer_matches(pred, sample)
        hits["all"].append(ok)
        hits[str(sample.meta.get("qtype", "?"))].append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def read_card(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``zoo_card.json`` of a zoo model folder."""
    return json.loads((Path(folder) / CARD).read_text())


def build_zoo_model(recipe: Union[str, ZooRecipe], out: Union[str, os.PathLike], *, device: str = "cpu",
                    eval_samples: int = 600, progress: bool = False) -> Path:
    """Build the zoo model ``recipe`` into the folder ``out`` (written whole, or not at all).

    Returns ``out``. The card's ``pretrain_scores`` are measured on the first
    ``eval_samples`` samples of the recipe's held-out split with the saved
    (float16-rounded) weights, so a user reloading the folder gets them back.
    """
    from ..attacks.finetune import FineTune
    from ..datasets import DATASETS
    from ..surrogates import load_surrogate
    from ..surrogates.tiny import build_tiny

    recipe = ZOO[recipe] if isinstance(recipe, str) else recipe
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it first")
    start = time.perf_counter()
    image_size = int(recipe.data.get("image_size", 48))
    data_cfg = {k: v for k, v in recipe.data.items() if k != "name"}
    train, held_out = DATASETS.create(recipe.data["name"], **data_cfg).build()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        raw = tmp / "random-init"
        build_tiny(recipe.family, raw, seed=recipe.seed, extra_corpus=tokenizer_corpus(image_size), **recipe.arch)
        model = load_surrogate(raw, device=device)
        vision = {}
        if recipe.vision:
            vision = _vision_stage(model, recipe, image_size)
        result = FineTune(**recipe.train)(model, train, progress=progress)
        final = tmp / "model"
        model.model.to(torch.float16)
        model.save(final)
        del model
        reloaded = load_surrogate(final, device=device)
        scores = score_by_type(reloaded, list(held_out)[:eval_samples])
        files = {p.name: sha256_file(p) for p in sorted(final.iterdir()) if p.is_file()}
        card = {
            "name": recipe.name, "recipe": recipe.to_dict(), "recipe_hash": recipe_hash(recipe),
            "pretrain_scores": scores, "eval_samples": min(eval_samples, len(held_out)), **vision,
            "pretrain_epoch_losses": [round(x, 4) for x in result.epoch_losses],
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "files": files,
        }
        (final / CARD).write_text(json.dumps(card, indent=1) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, out)
        log.info("built zoo model %s in %.0f s: %s", recipe.name, card["seconds"], scores)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vision_stage(model, recipe: ZooRecipe, image_size: int) -> Dict[str, Any]:
    """Run the recipe's dense visual pretraining on ``model``; the card entries it adds."""
    from ..datasets import DATASETS
    from ..registry import make_config
    from .vision import VisionStage, pretrain_vision

    stage = make_config(VisionStage, f"zoo recipe {recipe.name} vision", recipe.vision)
    layout = {k: recipe.data[k] for k in ("grid", "max_objects", "object_scale", "text_scale") if k in recipe.data}
    images = DATASETS.create("scenes_pretrain", types=["caption"], n_train=stage.n_train, n_test=stage.n_test,
                             image_size=image_size, seed=stage.seed, **layout)
    train, held_out = images.build()
    start = time.perf_counter()
    losses, scores = pretrain_vision(model, list(train), images.config.grid, stage, held_out=list(held_out))
    seconds = round(time.perf_counter() - start, 1)
    log.info("vision stage of %s: %.0f s, held-out %s", recipe.name, seconds, scores)
    return {"vision_scores": scores, "vision_epoch_losses": [round(x, 4) for x in losses], "vision_seconds": seconds}


def packaged_folder(name: str) -> Optional[Path]:
    """The folder of ``name`` shipped inside the package, if it is there and matches the recipe."""
    base = resources.files("toolkit.zoo").joinpath("weights", name)
    folder = Path(str(base))
    if not (folder / CARD).is_file() or name not in ZOO:
        return None
    if read_card(folder).get("recipe_hash") != recipe_hash(ZOO[name]):
        log.warning("packaged zoo model %s was built from another recipe; ignoring it", name)
        return None
    return folder


def cache_root() -> Path:
    """Where zoo models built on demand live: ``$MMGUARD_ZOO_CACHE`` or ``~/.cache/mmguard/zoo``."""
    return Path(os.environ.get("MMGUARD_ZOO_CACHE", Path.home() / ".cache" / "mmguard" / "zoo"))


def zoo_folder(name: str, *, build: bool = True, device: str = "cpu", progress: bool = False) -> Path:
    """Folder of the zoo model ``name``: packaged copy, else the cache (built there first if ``build``).

    Raises ``KeyError`` for an unknown name and ``FileNotFoundError`` when the
    model is neither shipped nor cached and ``build`` is False.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO)) or '(none)'}")
    shipped = packaged_folder(name)
    if shipped is not None:
        return shipped
    folder = cache_root() / f"{name}-{recipe_hash(ZOO[name])}"
    if (folder / CARD).is_file():
        return folder
    if not build:
        raise FileNotFoundError(f"zoo model {name!r} is not built; run `mmguard zoo build {name}`")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return build_zoo_model(name, folder, device=device, progress=progress)
