"""Command line: ``mmguard demo``, ``protect``, ``matrix``, ``report``, ``train-purifier`` and ``data``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["main", "parse_number", "parse_config"]


def parse_number(text: str) -> float:
    """Parse "0.03", "8/255" or "8" style numbers (fractions allowed)."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def parse_config(items: Optional[List[str]]) -> Dict[str, Any]:
    """Parse ``key=value`` pairs; values are JSON when they parse (numbers, booleans), fractions, else strings."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            try:
                out[key] = float(Fraction(value))
            except (ValueError, ZeroDivisionError):
                out[key] = value
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .matrix import peak_memory_mib
    from .reports import aggregate, format_markdown

    start = time.perf_counter()
    rows = run_demo(Path(args.out), epochs=args.epochs, seed=args.seed, limit=args.limit,
                    progress=not args.quiet, defenses=args.defenses)
    print(format_markdown(aggregate(rows)))
    print(f"\nwrote {Path(args.out) / 'results.md'}, results.csv, rows.jsonl and the heatmap; "
          f"total {time.perf_counter() - start:.0f} s, peak memory {peak_memory_mib():.0f} MiB")
    return 0


def _cmd_protect(args: argparse.Namespace) -> int:
    from .distributed import launched_by_torchrun, process_group

    # --distributed, or a torchrun launch of several processes: one data-parallel protection (rank 0 writes)
    if args.distributed or (launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1):
        with process_group(args.device) as (world, device):
            if world is not None and not world.is_main:  # rank 0 alone logs and shows progress
                logging.getLogger().setLevel(logging.WARNING)
            return _protect(args, device, world is None or world.is_main)
    return _protect(args, args.device, True)


def _protect(args: argparse.Namespace, device: str, main: bool) -> int:
    """``mmguard protect`` in this process on ``device``; only the ``main`` process writes the release."""
    from .defenses import DEFENSES
    from .data import load_dataset
    from .release import check_release_target, write_release
    from .surrogates import load_surrogate

    _import_plugins(args.plugin)
    config = parse_config(args.set)
    if args.eps is not None:
        config["eps"] = args.eps
    if args.seed is not None:
        config["seed"] = args.seed
    if args.stream and "store" not in config:  # a min-min defense keeps its deltas on disk too
        import dataclasses

        if "store" in {f.name for f in dataclasses.fields(DEFENSES.get(args.defense).Config)}:
            config["store"] = "disk"
    defense = DEFENSES.create(args.defense, **config)  # validates name and config before any loading
    dataset = load_dataset(args.data, lazy=bool(args.stream))
    out = check_release_target(args.out, dataset, args.overwrite)  # before the expensive part
    # a typed "\n" (shell quotes keep it literal) means a newline
    extra = {"prompt_template": args.prompt_template.replace("\\n", "\n")} if args.prompt_template is not None else {}
    surrogates = [load_surrogate(p, device=device, dtype=args.dtype, **extra) for p in args.surrogate or []]
    if args.weights is not None:
        from .surrogates import Ensemble

        weights = [parse_number(w) for w in args.weights.split(",")]
        surrogates = [Ensemble(surrogates, weights)]
    protection = defense.protect(dataset, surrogates, progress=main and not args.quiet, checkpoint=args.checkpoint)
    if not main:
        return 0
    path = write_release(protection, out, overwrite=args.overwrite, layout=args.format)
    print(f"protected {len(dataset)} samples with {args.defense} in {protection.seconds:.1f} s -> {path} "
          f"({args.format} layout)")
    return 0


def parse_shard(text: Optional[str]) -> Optional[tuple]:
    """``--shard``: ``I/N`` (worker I of N, from 0), or ``env`` (``SLURM_ARRAY_TASK_ID`` /
    ``SLURM_ARRAY_TASK_COUNT``, else ``MMGUARD_SHARD=I/N``); None when not given."""
    if text is None:
        return None
    if text == "env":
        if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
            text = f"{os.environ['SLURM_ARRAY_TASK_ID']}/{os.environ['SLURM_ARRAY_TASK_COUNT']}"
        elif "MMGUARD_SHARD" in os.environ:
            text = os.environ["MMGUARD_SHARD"]
        else:
            raise ValueError("--shard env: set SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, or MMGUARD_SHARD=I/N")
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--shard: I/N with 0 <= I < N (or env), got {text!r}")
    i, n = int(parts[0]), int(parts[1])
    if not 0 <= i < n:
        raise ValueError(f"--shard: I/N with 0 <= I < N, got {text!r}")
    return i, n


def _import_plugins(modules) -> None:
    """Import each ``--plugin`` module (a module name or a .py file) so its components are registered."""
    from .registry import import_plugin

    for module in modules or ():
        import_plugin(module)


def _cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix import run_matrix
    from .reports import format_markdown, aggregate

    _import_plugins(args.plugin)

    rows = run_matrix(args.spec, args.out, progress=not args.quiet, device=args.device, dtype=args.dtype,
                      cache=args.cache, force=args.force, shard=parse_shard(args.shard))
    print(format_markdown(aggregate(rows)))
    print(f"rows, tables and heatmaps in {args.out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .release import verify_release

    r = verify_release(args.release, args.source)
    print(f"verified {r['samples']} samples of {args.release}: files match the manifest; largest pixel change "
          f"{r['max_change_levels']}/255 <= budget {r['eps_levels']}/255; answers unchanged; "
          f"{r['questions_with_trigger']} questions carry an inserted trigger (longest {r['longest_trigger']} words)")
    if args.preview:
        from .preview import contact_sheet

        print(f"contact sheet: {contact_sheet(args.release, args.source, args.preview, n=args.preview_samples)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .reports import aggregate, format_markdown, read_rows, write_reports

    paths = write_reports(args.out)
    print(format_markdown(aggregate(read_rows(args.out))))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_train_purifier(args: argparse.Namespace) -> int:
    from .attacks.purification import train_purifier
    from .data import load_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"{out} is not empty; pass --overwrite to replace it")
    clean = load_dataset(args.data)
    path = train_purifier(clean, out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          timesteps=args.timesteps, channels=args.channels, seed=args.seed,
                          device=args.device, progress=not args.quiet)
    print(f"trained a purifier on {len(clean)} clean images -> {path} "
          f"(use: diffusion_purification model={path})")
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    import shutil

    from PIL import Image

    from .datasets import DATASETS

    config = parse_config(args.set)
    for key, value in (("n_train", args.n_train), ("n_test", args.n_test), ("image_size", args.image_size),
                       ("seed", args.seed)):
        if value is not None:
            config[key] = value
    dataset = DATASETS.create(args.name, **config)  # validates name and config before anything is written
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ValueError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out / "images", ignore_errors=True)
        for name in ("train.json", "test.json"):
            (out / name).unlink(missing_ok=True)
    start = time.perf_counter()
    splits = dataset.build()
    (out / "images").mkdir(parents=True, exist_ok=True)
    reserved = {"id", "image", "conversations", "choices"}
    for split, data in zip(("train", "test"), splits):
        records = []
        for s in data:
            relative = f"images/{s.id}.png"
            Image.fromarray(s.image).save(out / relative)
            record: Dict[str, Any] = {"id": s.id, "image": relative, "conversations": [
                {"from": "human", "value": "<image>\n" + s.question}, {"from": "gpt", "value": s.answer}]}
            if s.choices is not None:
                record["choices"] = list(s.choices)
            record.update({k: v for k, v in dict(s.meta).items() if k not in reserved})
            records.append(record)
        (out / f"{split}.json").write_text(json.dumps(records))
    print(f"wrote {len(splits[0])} train and {len(splits[1])} test samples of {args.name} to {out} "
          f"(train.json, test.json, images/) in {time.perf_counter() - start:.1f} s")
    return 0


def _describe_entry(cls: type) -> str:
    """``summary`` line plus what configures the class: config fields and defaults, or capabilities / kind."""
    import dataclasses

    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    config = getattr(cls, "Config", None)
    details = []
    if config is not None and dataclasses.is_dataclass(config):
        details.append(", ".join(
            f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else
            (f"{f.name}={f.default_factory()!r}" if f.default_factory is not dataclasses.MISSING else f.name)
            for f in dataclasses.fields(config)) or "(no config)")
    if getattr(cls, "capabilities", None):
        details.append("capabilities: " + ", ".join(sorted(cls.capabilities)))
    if isinstance(getattr(cls, "kind", None), str):
        details.append(f"kind: {cls.kind}, " + ("higher is better" if cls.higher_is_better else "lower is better"))
    if getattr(cls, "needs_fit", False):
        details.append("fitted on the attacker's clean data; fit keys: " + (", ".join(sorted(cls.fit_keys)) or "none"))
    return f"{summary}" + "".join(f"\n    {d}" for d in details)


def _registries() -> Dict[str, Any]:
    from .attacks import COUNTERMEASURES
    from .datasets import DATASETS
    from .defenses import DEFENSES
    from .metrics import METRICS
    from .surrogates import SURROGATES

    return {"defenses": DEFENSES, "countermeasures": COUNTERMEASURES, "surrogates": SURROGATES,
            "metrics": METRICS, "datasets": DATASETS}


def _cmd_list(args: argparse.Namespace) -> int:
    _import_plugins(args.plugin)
    registries = _registries()
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
        if len(kinds) > 1:
            print(f"## {kind}")
        registry = registries[kind]
        for name in registry.names():
            print(f"{name}: {_describe_entry(registry.get(name))}")
        if len(kinds) > 1:
            print()
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from .datasets import DATASETS

    for name in DATASETS.names():
        print(f"{name}: {_describe_entry(DATASETS.get(name))}")
    return 0


def _cmd_zoo_list(args: argparse.Namespace) -> int:
    from .zoo import ZOO, cache_root, packaged_folder, read_card, recipe_hash

    for name, recipe in sorted(ZOO.items()):
        shipped = packaged_folder(name)
        cached = cache_root() / f"{name}-{recipe_hash(recipe)}"
        where = "packaged" if shipped else ("cached" if (cached / "zoo_card.json").is_file() else "not built")
        line = f"{name}: {recipe.summary} [{recipe.family}; {where}]"
        folder = shipped or (cached if where == "cached" else None)
        if folder is not None:
            scores = read_card(folder)["pretrain_scores"]
            line += "\n    held-out pretraining accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            line += f"\n    folder: {folder}"
        print(line)
    return 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from .zoo import ZOO, build_zoo_model, read_card, zoo_folder

    names = args.names or sorted(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"unknown zoo model(s) {unknown}; known: {sorted(ZOO)}")
    for name in names:
        start = time.perf_counter()
        if args.out:
            target = Path(args.out) / name
            if target.exists() and args.overwrite:
                import shutil

                shutil.rmtree(target)
            folder = build_zoo_model(name, target, device=args.device, progress=not args.quiet)
        else:
            folder = zoo_folder(name, device=args.device, progress=not args.quiet)
        card = read_card(folder)
        print(f"{name}: {folder} ({time.perf_counter() - start:.0f} s; held-out pretraining accuracy "
              f"{card['pretrain_scores']['all']:.3f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mmguard`` argument parser."""
    parser = argparse.ArgumentParser(prog="mmguard", description="MMGuard Toolkit: protect image+text data "
                                     "against unauthorized LVLM fine-tuning, and stress-test protections.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="MMGuard, EMN and MEM vs JPEG-10 and the trigger filter, LoRA "
                          "victim, on the procedural testbed")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="victim LoRA epochs (default: the spec's 15)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--limit", type=int, default=0,
                      help="a small slice: N training samples, N/3 test (0 = the spec's 1,000 / 300)")
    demo.add_argument("--defenses", nargs="*", default=None, help="subset of demo defense labels")
    demo.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (0 = torch's default; set it when several jobs share the cores)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    protect = sub.add_parser("protect", help="protect a LLaVA-JSON / JSONL dataset and write a release")
    protect.add_argument("--defense", required=True, help="registered defense name (e.g. emn, random_noise)")
    protect.add_argument("--surrogate", action="append",
                         help="local model folder of any supported family (repeat for an ensemble)")
    protect.add_argument("--data", required=True, help="dataset file (.json LLaVA-style or .jsonl)")
    protect.add_argument("--out", required=True, help="release folder to create")
    protect.add_argument("--format", choices=("mmguard", "llava"), default="mmguard",
                         help="release layout: mmguard (data.jsonl with trigger annotations, for evaluation) or "
                              "llava (data.json with the source's conversations and file names, to publish)")
    protect.add_argument("--eps", type=parse_number, default=None, help="L_inf budget, e.g. 8/255")
    protect.add_argument("--seed", type=int, default=None)
    protect.add_argument("--set", action="append", metavar="KEY=VALUE", help="defense config entry (repeatable)")
    protect.add_argument("--weights", default=None,
                         help="comma-separated ensemble weights, one per --surrogate (default: uniform average)")
    protect.add_argument("--checkpoint", default=None,
                         help="file for per-round state; rerunning with it resumes an interrupted run")
    protect.add_argument("--device", default="cpu",
                         help="cpu, cuda or cuda:K (distributed: every rank uses cuda:LOCAL_RANK)")
    protect.add_argument("--dtype", default="float32")
    protect.add_argument("--distributed", action="store_true",
                         help="data-parallel protection over the processes torchrun starts (gloo on CPU, nccl on "
                              "CUDA; rank 0 writes the release): torchrun --nproc-per-node N -m toolkit.cli "
                              "protect --distributed ... (a torchrun launch of N > 1 processes implies it)")
    protect.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    protect.add_argument("--stream", action="store_true",
                         help="decode images from their files on access instead of holding them, and keep a "
                              "min-min defense's deltas in a memory-mapped file (store=disk, unless --set "
                              "store=... says otherwise): memory flat in the dataset's size (docs/SCALE.md)")
    protect.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (0 = torch's default; set it when several jobs share the cores)")
    protect.add_argument("--quiet", action="store_true")
    protect.add_argument("--prompt-template", default=None, metavar="TEXT",
                         help="prompt format for checkpoints without a chat template: {image} and {question} once "
                              "each, e.g. 'USER: {image}\\n{question} ASSISTANT:' (default: the checkpoint's chat "
                              "template, else the family's documented format)")
    protect.add_argument("--plugin", action="append", metavar="MODULE",
                         help="import MODULE (a module name or a .py file) first, e.g. for a defense of your own")
    protect.set_defaults(func=_cmd_protect)

    matrix = sub.add_parser("matrix", help="run (or resume) a defense x countermeasure x victim matrix")
    matrix.add_argument("spec", help="YAML spec file, or the name of a packaged spec (demo)")
    matrix.add_argument("--out", required=True, help="run folder (cache, rows.jsonl, reports)")
    matrix.add_argument("--cache", default=None,
                        help="cache folder (default OUT/cache); content-addressed, so specs can share one")
    matrix.add_argument("--device", default="cpu")
    matrix.add_argument("--dtype", default="float32")
    matrix.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (0 = torch's default; set it when several jobs share the cores)")
    matrix.add_argument("--quiet", action="store_true")
    matrix.add_argument("--shard", default=None, metavar="I/N",
                        help="run worker I's share of N (0-based) into the shared --out folder; 'env' reads "
                             "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or MMGUARD_SHARD; `mmguard report` merges")
    matrix.add_argument("--force", action="store_true",
                        help="run into a folder that holds another spec's results (its rows are replaced)")
    matrix.add_argument("--plugin", action="append", metavar="MODULE",
                        help="import MODULE (a module name or a .py file) first, so the defenses, countermeasures "
                             "and metrics it registers can be used in the spec (repeatable)")
    matrix.set_defaults(func=_cmd_matrix)

    report = sub.add_parser("report", help="re-render tables and heatmaps from a matrix run folder")
    report.add_argument("out", help="the run folder given to `mmguard matrix --out`")
    report.set_defaults(func=_cmd_report)

    purifier = sub.add_parser("train-purifier", help="train a small diffusion denoiser on the attacker's clean images")
    purifier.add_argument("--data", required=True, help="the attacker's own clean images (.json / .jsonl)")
    purifier.add_argument("--out", required=True, help="folder for unet/ and scheduler/")
    purifier.add_argument("--epochs", type=int, default=20)
    purifier.add_argument("--batch-size", type=int, default=32)
    purifier.add_argument("--lr", type=float, default=1e-3)
    purifier.add_argument("--timesteps", type=int, default=200)
    purifier.add_argument("--channels", type=int, default=32)
    purifier.add_argument("--seed", type=int, default=0)
    purifier.add_argument("--device", default="cpu")
    purifier.add_argument("--overwrite", action="store_true")
    purifier.add_argument("--quiet", action="store_true")
    purifier.set_defaults(func=_cmd_train_purifier)

    verify = sub.add_parser("verify", help="check a release against the source data: files, budget, answers, triggers")
    verify.add_argument("release", help="the release folder (from `mmguard protect`)")
    verify.add_argument("--source", required=True, help="the owner's source dataset (.json LLaVA-style or .jsonl)")
    verify.add_argument("--preview", default=None, metavar="FILE.png",
                        help="also draw a contact sheet: source, release, amplified |delta|, question with the "
                             "inserted words in red")
    verify.add_argument("--preview-samples", type=int, default=8, metavar="N", help="rows of the contact sheet")
    verify.set_defaults(func=_cmd_verify)

    listing_all = sub.add_parser("list", help="registered defenses, countermeasures, surrogates, metrics and datasets "
                                              "with their summaries and config defaults")
    listing_all.add_argument("kind", nargs="?", default=None,
                             choices=["defenses", "countermeasures", "surrogates", "metrics", "datasets"])
    listing_all.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE first (repeatable)")
    listing_all.set_defaults(func=_cmd_list)

    zoo = sub.add_parser("zoo", help="the pretrained tiny model zoo: list, build")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_sub.add_parser("list", help="each zoo model, where it is and its held-out pretraining scores")
    zoo_list.set_defaults(func=_cmd_zoo_list)
    zoo_build = zoo_sub.add_parser("build", help="build zoo models (default: all) into the cache or --out")
    zoo_build.add_argument("names", nargs="*", help="zoo model names (default: every one)")
    zoo_build.add_argument("--out", default=None, help="write OUT/NAME instead of the cache (e.g. to package them)")
    zoo_build.add_argument("--overwrite", action="store_true", help="replace OUT/NAME if it exists")
    zoo_build.add_argument("--device", default="cpu")
    zoo_build.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    zoo_build.add_argument("--quiet", action="store_true")
    zoo_build.set_defaults(func=_cmd_zoo_build)

    data = sub.add_parser("data", help="build registered datasets (procedural scenes, digits) as LLaVA JSON")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser("make", help="write DIR/train.json, DIR/test.json and DIR/images/*.png")
    make.add_argument("name", help="registered dataset name (see `mmguard data list`)")
    make.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    make.add_argument("--n-train", type=int, default=None, help="training samples")
    make.add_argument("--n-test", type=int, default=None, help="test samples")
    make.add_argument("--image-size", type=int, default=None, help="image side in pixels")
    make.add_argument("--seed", type=int, default=None)
    make.add_argument("--set", action="append", metavar="KEY=VALUE", help="dataset config entry (repeatable)")
    make.add_argument("--overwrite", action="store_true",
                      help="replace train.json, test.json and images/ in a non-empty folder")
    make.set_defaults(func=_cmd_data_make)
    listing = data_sub.add_parser("list", help="registered datasets with their config defaults")
    listing.set_defaults(func=_cmd_data_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mmguard`` console script; errors print one line and exit 2."""
    from .data import DataError
    from .release import ReleaseError
    from .surrogates.base import CapabilityError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):  # transformers' own bars (e.g. "Writing model shards") too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if getattr(args, "threads", 0):
        if args.threads < 0:
            print(f"error: --threads must be >= 0, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`mmguard list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: every finished stage is cached (and its rows are in rows.jsonl); run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except (DataError, ReleaseError, CapabilityError, ValueError, KeyError, TypeError, OSError,
            argparse.ArgumentTypeError, ImportError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
