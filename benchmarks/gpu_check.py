"""Short GPU check: every tiny family on CUDA in bfloat16, plus protect-step timings, plus two models at their
real sizes (under 10 minutes on one H200).

    .venv/bin/python benchmarks/gpu_check.py --device cuda --out gpu_check.json

For each tiny family (LLaVA, LLaVA-NeXT, Qwen2/2.5/3-VL, GLM-4V, Gemma 3,
InternVL, Idefics3, SmolVLM, PaliGemma, Mllama, plus open_clip and timm): build,
load on the device in the given dtype, check the loss is finite and the image
gradient finite and non-zero, run greedy ``answer`` where the family generates,
and time one PGD protect step against the bare forward+backward (median of 5,
with CUDA synchronisation). Exits 1 if any family fails; writes a JSON report.
Runs on CPU too (``--device cpu``) for a dry run.

Then (``--real``, default both) random-init LLaVA-1.5-7B and Qwen2.5-VL-7B with their published configs
(``real_configs.py``: no weights needed), each with gradient checkpointing off and on: the protect step vs
bare forward+backward, one MMGuard-BPH round per sample (5-word trigger, 8 candidates per slot) as seconds
and as a multiple of a bare forward+backward per sample, and peak memory. ``--real-scale dry`` keeps
their geometry with tiny widths (a CPU dry run in about a minute); ``--real none`` skips them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path


def timed(fn, device, repeats=5):
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call (CUDA synchronised)."""
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def protect_step_timings(s, x, samples, device, repeats=5):
    """(bare input-gradient forward+backward, one PGD protect step) median seconds on the frozen surrogate
    ``s`` for pixels ``x`` (N, 3, H, W) and their samples (call inside ``s.frozen()``)."""
    import torch

    from toolkit.engine import pgd, project

    def bare():
        d = torch.zeros_like(x, requires_grad=True)
        return torch.autograd.grad(s.loss(x + d, samples).sum(), d)

    def step():
        return pgd(lambda d: s.loss(x + d, samples).sum(), torch.zeros_like(x), step_size=2 / 255, steps=1,
                   project_fn=lambda d: project(d, x, 8 / 255))

    return timed(bare, device, repeats), timed(step, device, repeats)


def check_family(family: str, folder: Path, device: str, dtype: str, x, samples) -> dict:
    """Load one tiny family on ``device`` and measure it; raises on a failed check."""
    import torch

    from toolkit.surrogates import load_surrogate

    s = load_surrogate(folder, device=device, dtype=dtype)
    xd = x.clone().requires_grad_(True)
    with s.frozen():
        loss = s.loss(xd, samples)
        (g,) = torch.autograd.grad(loss.sum(), xd)
        if not torch.isfinite(loss).all():
            raise AssertionError("non-finite loss")
        if not (torch.isfinite(g).all() and g.abs().sum() > 0):
            raise AssertionError("image gradient is zero or non-finite")

        t_bare, t_step = protect_step_timings(s, x, samples, device)
    answers = None
    if "generate" in s.capabilities:
        answers = s.answer(x[:2], [q.question for q in samples[:2]], max_new_tokens=2)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None
    return {"family": family, "loss": float(loss.float().mean()), "bare_ms": 1e3 * t_bare,
            "protect_step_ms": 1e3 * t_step, "ratio": t_step / t_bare, "answers": answers, "peak_mib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--real", default="all", help="real-size models to check: all, none or a comma list of "
                        "llava-1.5-7b, qwen2.5-vl-7b")
    parser.add_argument("--real-scale", choices=("real", "dry"), default="real")
    parser.add_argument("--real-samples", type=int, default=4)
    args = parser.parse_args()
    from real_configs import REAL_CONFIGS

    unknown = [] if args.real in ("all", "none") else [n for n in args.real.split(",") if n not in REAL_CONFIGS]
    if unknown:
        parser.error(f"--real: unknown model(s) {', '.join(unknown)}; known: {', '.join(REAL_CONFIGS)}")

    import torch

    from toolkit.data import images_to_tensor
    from toolkit.digits import load_digits_vqa
    from toolkit.surrogates.tiny import build_tiny, tiny_families
    from toolkit.surrogates.tiny.other import build_tiny_other, other_tiny_families

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine", file=sys.stderr)
        return 2
    train, _ = load_digits_vqa(image_size=32, seed=0, limit=64)
    samples = list(train)[:args.batch]
    x = images_to_tensor([s.image for s in samples])
    report = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "families": []}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(f, build_tiny) for f in tiny_families()] + [(f, build_tiny_other) for f in other_tiny_families()]
        for family, builder in jobs:
            try:
                folder = builder(family, Path(tmp) / family, seed=0)
                row = check_family(family, folder, args.device, args.dtype, x, samples)
                row["ok"] = True
            except Exception as exc:  # report every family, then fail
                failed += 1
                row = {"family": family, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc(limit=3)}
            report["families"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
        from real_configs import check_real_config

        names = [] if args.real == "none" else list(REAL_CONFIGS) if args.real == "all" else args.real.split(",")
        report["real_configs"] = []
        for name in names:
            try:
                row = check_real_config(name, Path(tmp), args.device, args.dtype, args.real_scale, args.real_samples)
                row["ok"] = True
            except Exception as exc:  # report, then fail
                failed += 1
                row = {"model": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc(limit=3)}
                print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
            report["real_configs"].append(row)
    Path(args.out).write_text(json.dumps(report, indent=2))
    total = len(report["families"]) + len(report["real_configs"])
    print(f"{total - failed}/{total} checks passed (tiny families and real-size models) -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
