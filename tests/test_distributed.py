"""Data-parallel protection (toolkit.distributed): two gloo ranks (spawned with the environment torchrun
sets) give the one-process release, through ``mmguard protect --distributed`` (an image defense) and the
Python API (a trigger defense on LLaVA, MEM on CLIP); ``--distributed`` outside torchrun is refused.

Tolerance: a released image may differ from the one-process image by at most 1/255 per pixel, and the
triggers must be the same words. Cause: the ranks' gradients are all-reduced, so the surrogate's gradient
is a sum of per-rank partial sums (weighted by each rank's share of the batch) instead of one backward
pass over the whole batch; float summation order differs in the last bits, which can round a protected
pixel to the neighbouring uint8 level. Everything else is exact (each sample is stepped in the batch it
has in one process, deltas and triggers are gathered bit for bit, scoring sums exact zeros, every rank
draws the same random numbers), and on these settings the releases are identical (0/255). The bound is
for rounding only: were the last-bit difference to flip the sign of a near-zero PGD gradient, that pixel
would move by 2 x step_size (seen once off these settings: TUE, batch 3, one pixel of 30,720 at 2/255).
"""
import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from toolkit import DEFENSES
from toolkit.cli import main
from toolkit.release import read_release

BASE = {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 4, "pgd_batch_size": 2, "eval_size": 8,
        "stop_accuracy": 1.0, "stop_clean_accuracy": 0.0}
#: the image defense and the trigger defense (no LoRA dropout: its masks are drawn per rank's slice, see
#: docs/SCALE.md, so with dropout a distributed run is another random draw than the one-process run)
CONFIGS = {"emn": dict(BASE),
           "mmguard_bph": {**BASE, "max_trigger_tokens": 2, "trigger_candidates": 4, "lora_dropout": 0.0,
                           "train_unit": "steps"},
           # on CLIP, whose contrastive training loss couples a batch's samples (not split over the ranks)
           "mem": {**BASE, "max_trigger_tokens": 2, "trigger_candidates": 4}}
LEVELS = 1  # the tolerance in uint8 levels (see the module docstring)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _release(protection):
    return [s.image for s in protection.dataset], [s.question for s in protection.dataset]


def _rank(rank, world, ports, model_dir, clip_dir, data, data_file, out):
    """One rank: ``mmguard protect --distributed`` with the image defense (rank 1 is handed its own --out,
    which must stay unwritten), then the trigger defense through the Python API in a process group of its
    own (on a second port: the first group's store may still be up while the other rank starts the second);
    then MEM on a CLIP surrogate in a third group; rank 0 pickles the API releases to ``out``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    from toolkit.distributed import process_group
    from toolkit.surrogates import load_surrogate

    assert main([*_cli_args("emn", model_dir, data_file), "--distributed", "--out", f"{out}-cli{rank}"]) == 0
    surrogate = load_surrogate(model_dir)
    os.environ["MASTER_PORT"] = str(ports[1])
    with process_group("cpu") as (w, _):
        assert w is not None and (w.rank, w.size) == (rank, world)
        release = _release(DEFENSES.create("mmguard_bph", **CONFIGS["mmguard_bph"]).protect(data, [surrogate]))
    os.environ["MASTER_PORT"] = str(ports[2])
    with process_group("cpu"):
        clip_release = _release(DEFENSES.create("mem", **CONFIGS["mem"]).protect(data, [load_surrogate(clip_dir)]))
    if rank == 0:
        Path(out).write_bytes(pickle.dumps((release, clip_release)))


def _cli_args(name, model_dir, data_file):
    sets = [x for k, v in CONFIGS[name].items() for x in ("--set", f"{k}={json.dumps(v)}")]
    return ["protect", "--defense", name, "--surrogate", str(model_dir), "--data", str(data_file), "--quiet", *sets]


def _assert_close(one, two):
    (images1, questions1), (images2, questions2) = one, two
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images1, images2))
    assert worst <= LEVELS, f"largest pixel difference {worst}/255 > {LEVELS}/255"
    assert questions1 == questions2


def test_two_ranks_release_what_one_process_releases(tiny_llava_dir, digits_small, llava, llava_json, tmp_path):
    data, data_file = digits_small[0][:8], llava_json(digits_small[0], 8)
    out = tmp_path / "ranks.pkl"
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny.other import build_tiny_other

    clip_dir = build_tiny_other("open_clip", tmp_path / "clip", seed=0)
    mp.spawn(_rank, args=(2, (_free_port(), _free_port(), _free_port()), str(tiny_llava_dir), str(clip_dir), data,
                          str(data_file), str(out)), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (and fast on a busy machine)
    try:
        one_api = _release(DEFENSES.create("mmguard_bph", **CONFIGS["mmguard_bph"]).protect(data, [llava]))
        one_clip = _release(DEFENSES.create("mem", **CONFIGS["mem"]).protect(data, [load_surrogate(clip_dir)]))
        assert main([*_cli_args("emn", tiny_llava_dir, data_file), "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    two_api, two_clip = pickle.loads(out.read_bytes())
    _assert_close(one_api, two_api)
    _assert_close(one_clip, two_clip)
    assert one_api[1] != [s.question for s in data]  # the trigger defense did insert triggers
    one, two = (read_release(p) for p in (tmp_path / "one", f"{out}-cli0"))
    _assert_close(([s.image for s in one], [s.question for s in one]),
                  ([s.image for s in two], [s.question for s in two]))
    assert not Path(f"{out}-cli1").exists()  # rank 1 wrote no release


def test_distributed_flag_outside_torchrun_is_refused(tiny_llava_dir, llava_json, digits_small, tmp_path,
                                                      monkeypatch, capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    rc = main(["protect", "--defense", "emn", "--surrogate", str(tiny_llava_dir), "--data",
               str(llava_json(digits_small[0], 4)), "--out", str(tmp_path / "out"), "--distributed", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "torchrun --nproc-per-node N -m toolkit.cli protect --distributed" in err and "RANK" in err
    assert not (tmp_path / "out").exists()
