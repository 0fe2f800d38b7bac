"""Peak memory of protecting n and 4n samples: the memory store vs the disk store with lazy images.

Each (path, n) runs in a fresh process (``_memory_probe.py``: EMN, one round with one training step and
one PGD step, on the tiny LLaVA; 128 x 128 digit images so the images dominate what grows), because a
process's peak RSS can only be read once. ``memory`` is the default (images decoded at load, float32
clean pixels and deltas in memory); ``stream`` is ``load_dataset(lazy=True)`` with ``store="disk"``
(float16 memory map). ``extra_info`` holds every probe's numbers (peak RSS, its growth over the
process's size before protecting, and the same for anonymous memory) and, per path, the ratios
peak(4n) / peak(n) and growth(4n) / growth(n). What still grows on the stream path: the released uint8
images (``Protection.dataset``, 3 bytes a pixel) and the store's mapped pages (6 bytes a pixel, file-backed,
counted in RSS while resident but not in anonymous memory).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from toolkit.digits import load_digits_vqa
from toolkit.surrogates.tiny import build_tiny_llava

N, SIZE = 64, 128
PROBE = Path(__file__).with_name("_memory_probe.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny LLaVA and two JSONL datasets (n and 4n records) over the same 128 x 128 PNGs."""
    root = tmp_path_factory.mktemp("memory-scale")
    model = build_tiny_llava(root / "tiny-llava", seed=0)
    train, _ = load_digits_vqa(image_size=SIZE, seed=0)
    samples = list(train[:4 * N])
    (root / "img").mkdir()
    lines = []
    for i, s in enumerate(samples):
        Image.fromarray(s.image).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"id": s.id, "image": f"img/{i}.png", "question": s.question, "answer": s.answer}))
    data = {}
    for n in (N, 4 * N):
        data[n] = root / f"data{n}.jsonl"
        data[n].write_text("\n".join(lines[:n]) + "\n")
    return model, data


def _probe(model, data, path):
    """Run ``_memory_probe.py`` in a fresh process; its JSON result."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [repo] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    out = subprocess.run([sys.executable, str(PROBE), str(model), str(data), path], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_protect_peak_memory_n_and_4n(benchmark, files):
    """Peak memory at n and 4n for both paths (see the module docstring); the stream path grows far less."""
    model, data = files

    def measure():
        return {(path, n): _probe(model, data[n], path) for path in ("memory", "stream") for n in (N, 4 * N)}

    runs = benchmark.pedantic(measure, rounds=1, iterations=1)
    info = benchmark.extra_info
    info["sizes"] = [N, 4 * N]
    info["image_size"] = SIZE
    for (path, n), r in runs.items():
        info[f"{path}_{n}"] = r
    summary = []
    for path in ("memory", "stream"):
        small, large = runs[(path, N)], runs[(path, 4 * N)]
        info[f"{path}_peak_ratio"] = large["peak_mb"] / small["peak_mb"]
        info[f"{path}_growth_ratio"] = large["growth_mb"] / max(small["growth_mb"], 1e-9)
        line = (f"{path}: peak RSS {small['peak_mb']:.0f} -> {large['peak_mb']:.0f} MiB "
                f"(x{info[f'{path}_peak_ratio']:.3f}); added by protect {small['growth_mb']:.1f} -> "
                f"{large['growth_mb']:.1f} MiB")
        if "growth_anon_mb" in large:
            line += f"; anonymous added {small['growth_anon_mb']:.1f} -> {large['growth_anon_mb']:.1f} MiB"
        summary.append(line)
    print("\n" + "\n".join(summary))
    assert all(r["n"] in (N, 4 * N) for r in runs.values())
    # what protecting 3n more samples adds: the stream path adds far less than the memory path
    extra = {p: runs[(p, 4 * N)]["peak_mb"] - runs[(p, N)]["peak_mb"] for p in ("memory", "stream")}
    info["extra_mb_for_3n_more"] = extra
    if all(r["peak_reset"] for r in runs.values()):  # elsewhere the peaks are the processes' lifetime peaks
        assert extra["stream"] < 0.6 * extra["memory"]
