"""Peak memory of one protection, measured in a fresh process (run by ``test_memory_scale.py``).

Usage: ``python _memory_probe.py MODEL_DIR DATA.jsonl {memory,stream}`` prints one JSON line:
``baseline_mb`` (RSS once torch, the surrogate and the dataset's records are loaded, just before
protecting), ``peak_mb`` (peak RSS from then on: VmHWM after resetting it through
/proc/self/clear_refs on Linux; elsewhere the process's lifetime ``ru_maxrss``, which loading may set),
``growth_mb`` (their difference: what the protection added), ``peak_reset`` (whether the peak could be
reset), ``peak_anon_mb`` / ``growth_anon_mb`` (the same for anonymous memory, sampled every 2 ms from
/proc/self/status on Linux: it leaves out file-backed pages such as the disk store's memory map, which
the kernel can write back and drop) and ``seconds``.

``memory``: eager images and ``store="memory"`` (the default); ``stream``: ``load_dataset(lazy=True)``
and ``store="disk"`` (float16).
"""
import json
import resource
import sys
import threading
import time

import torch

torch.set_num_threads(1)

CONFIG = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 16, "pgd_batch_size": 16, "eval_size": 16}


def _status(key: str):
    """A /proc/self/status entry in MiB (VmRSS, VmHWM, RssAnon, ...), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0), so the peak is the protection's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_mb() -> float:
    scale = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


class _AnonPeak(threading.Thread):
    """Largest RssAnon seen (MiB), sampled every 2 ms; None where /proc is missing."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = None, True

    @staticmethod
    def now():
        return _status("RssAnon")

    def run(self) -> None:
        while self.running:
            value = self.now()
            if value is None:
                return
            self.peak = value if self.peak is None else max(self.peak, value)
            time.sleep(0.002)


def main(model_dir: str, data: str, path: str) -> None:
    from toolkit import DEFENSES
    from toolkit.data import load_dataset
    from toolkit.surrogates import load_surrogate

    surrogate = load_surrogate(model_dir)
    dataset = load_dataset(data, lazy=path == "stream")
    store = {"store": "disk", "store_dtype": "float16"} if path == "stream" else {}
    defense = DEFENSES.create("emn", **CONFIG, **store)
    sampler = _AnonPeak()
    base_anon = sampler.now()
    reset = _reset_peak()
    if reset:  # the peak from here on is the protection's (loading torch and the model peaks higher)
        baseline, peak_of = _status("VmRSS"), lambda: _status("VmHWM")
    else:  # no way to reset: the process's lifetime peak
        baseline, peak_of = _max_rss_mb(), _max_rss_mb
    sampler.start()
    start = time.perf_counter()
    protection = defense.protect(dataset, [surrogate])
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    assert len(protection.dataset) == len(dataset)
    peak = peak_of()
    out = {"n": len(dataset), "path": path, "baseline_mb": baseline, "peak_mb": peak, "growth_mb": peak - baseline,
           "peak_reset": reset, "seconds": seconds}
    if sampler.peak is not None and base_anon is not None:
        out.update(peak_anon_mb=sampler.peak, growth_anon_mb=sampler.peak - base_anon)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
