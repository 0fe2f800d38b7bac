"""Faults: SIGKILL at random moments of `mmguard protect --checkpoint` and `mmguard matrix`, then a rerun, gives
outputs equal bit for bit to an uninterrupted run's; a full disk gives one error line and no half release."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from toolkit.release import sha256_file

CLI = [sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main(sys.argv[1:]))"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(args, timeout=600):
    done = subprocess.run(CLI + args, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_when(args, ready, rng, extra=(0.0, 1.5), timeout=300) -> bool:
    """Start the command, wait until ``ready()`` (work under way), wait a random extra moment, SIGKILL it.
    Returns whether it was killed (False: it finished first)."""
    proc = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.05)
    time.sleep(rng.uniform(*extra))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _files(folder: Path, skip=("manifest.json",)) -> dict:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.fixture()
def user_data(llava_json, digits_small):
    return llava_json(digits_small[0], 16)


def test_sigkilled_protect_resumes_to_the_same_release(user_data, tiny_llava_dir, tmp_path):
    def args(out, ckpt):
        return ["protect", "--defense", "mem", "--surrogate", str(tiny_llava_dir), "--data", str(user_data),
                "--out", str(out), "--checkpoint", str(ckpt), "--quiet", "--set", "rounds=10", "--set", "train_steps=2",
                "--set", "pgd_steps=3", "--set", "max_trigger_tokens=2", "--set", "trigger_candidates=4",
                "--set", "trigger_rounds=10", "--set", "eval_size=8", "--set", "stop_accuracy=1.0",
                "--set", "stop_clean_accuracy=0.0"]
    _run(args(tmp_path / "clean", tmp_path / "clean.pt"))
    rng = random.Random(0)
    ckpt, out = tmp_path / "faulted.pt", tmp_path / "faulted"

    def saved_since(start_ns):  # this attempt wrote a checkpoint: it got past at least one round
        return lambda: ckpt.is_file() and ckpt.stat().st_mtime_ns > start_ns
    kills = sum(_kill_when(args(out, ckpt), saved_since(time.time_ns()), rng, extra=(0.0, 0.3)) for _ in range(3))
    assert kills == 3  # every kill lands mid-run: after one of its rounds' checkpoints, before the release
    assert not out.exists()
    _run(args(out, ckpt))
    assert _files(out) == _files(tmp_path / "clean")  # every PNG and data.jsonl, bit for bit
    assert not list(tmp_path.glob(".faulted.*"))  # no half release left beside it


def test_sigkilled_matrix_resumes_to_the_same_rows(tmp_path):
    spec = {"name": "faults", "data": {"source": "digits", "image_size": 32, "limit": 40, "attacker_clean": 8},
            "models": {"s": {"tiny": "llava", "seed": 0}, "v": {"tiny": "llava", "seed": 1}},
            "defenses": [{"name": "random_noise"},
                         {"label": "emn", "name": "emn", "surrogates": ["s"],
                          "config": {"rounds": 4, "train_steps": 2, "pgd_steps": 2, "batch_size": 8,
                                     "pgd_batch_size": 8, "eval_size": 8}}],
            "countermeasures": [{"label": "jpeg", "name": "jpeg", "config": {"quality": 30}}],
            "victims": ["v"], "finetune": {"mode": "full", "epochs": 2, "batch_size": 16}, "seeds": [0]}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))

    def args(out):
        return ["matrix", str(tmp_path / "spec.yaml"), "--out", str(out), "--quiet", "--threads", "1"]

    def cells(out):
        keep = ("defense", "countermeasure", "victim", "accuracy", "linf", "psnr", "error")
        return sorted(json.dumps({k: r.get(k) for k in keep}, sort_keys=True)
                      for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines()))

    _run(args(tmp_path / "clean"))
    out, rng = tmp_path / "faulted", random.Random(1)

    def working():
        cache = out / "cache"
        return cache.is_dir() and any(cache.rglob("*.pt")) or any((cache / "finetune").glob("*")) \
            if cache.is_dir() else False
    kills = sum(_kill_when(args(out), working, rng, extra=(0.0, 3.0)) for _ in range(3))
    assert kills >= 2
    _run(args(out))
    assert cells(out) == cells(tmp_path / "clean")


def test_a_full_disk_gives_one_line_and_no_half_release(user_data, tmp_path, capsys, monkeypatch):
    from toolkit.cli import main

    original = Image.Image.save
    calls = {"n": 0}

    def filling(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", filling)
    rc = main(["protect", "--defense", "random_noise", "--data", str(user_data), "--out", str(tmp_path / "rel"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "No space left on device" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "rel").exists() and not list(tmp_path.glob(".rel.*"))
