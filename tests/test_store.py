"""Memory flat in the dataset's size: lazy images and the disk store of the min-min perturbation."""
import gc
import os

import numpy as np
import pytest
import torch

from toolkit import DEFENSES
from toolkit.cli import main
from toolkit.data import DataError, ImageFile, LazyVQASample, VQASample, load_dataset
from toolkit.defenses.minmin.state import CleanPixels, DiskDeltas
from toolkit.release import read_release

SMALL = {"rounds": 2, "train_steps": 2, "pgd_steps": 2, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
         "stop_accuracy": 1.0, "stop_clean_accuracy": 0.0}
RUNS = {"emn": ("emn", {}), "emn_uniform_lowfreq": ("emn", {"init": "uniform", "low_frequency": 4}),
        "emn_class": ("emn", {"granularity": "class", "init": "uniform"}),
        "mmguard_bph": ("mmguard_bph", {"max_trigger_tokens": 2, "trigger_candidates": 3, "train_steps": 1})}


@pytest.fixture()
def data(digits_small):
    return digits_small[0][:10]


def _pixels(protection):
    return np.stack([s.image for s in protection.dataset]).astype(int)


def _same(a, b):
    return (np.array_equal(_pixels(a), _pixels(b))
            and [s.question for s in a.dataset] == [s.question for s in b.dataset])


@pytest.mark.parametrize("key", sorted(RUNS))
def test_disk_store_gives_the_memory_stores_release(key, data, llava):
    """float32 on disk: the same bytes; float16: the stated tolerance (at most 1 grey level, on at most 1% of
    the values; the triggers are the same)."""
    name, extra = RUNS[key]
    memory = DEFENSES.create(name, **{**SMALL, **extra}).protect(data, [llava])
    exact = DEFENSES.create(name, **{**SMALL, **extra}, store="disk", store_dtype="float32").protect(data, [llava])
    assert _same(memory, exact)
    half = DEFENSES.create(name, **{**SMALL, **extra}, store="disk").protect(data, [llava])
    diff = np.abs(_pixels(memory) - _pixels(half))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
    assert [s.question for s in memory.dataset] == [s.question for s in half.dataset]
    assert half.config["store"] == "disk" and "store" not in memory.config  # the default manifest is unchanged


def test_disk_store_resumes_from_a_checkpoint(data, llava, tmp_path, crash_then_resume):
    make = lambda: DEFENSES.create("emn", **SMALL, init="uniform", store="disk", store_dtype="uint8",  # noqa: E731
                                   store_dir=str(tmp_path))
    full = make().protect(data, [llava])
    ckpt = tmp_path / "run.pt"
    resumed = crash_then_resume(make, data, [llava], ckpt)
    assert resumed.info["rounds"] == full.info["rounds"] == 2 and _same(full, resumed)
    # a memory-store run may not pick up a disk-store checkpoint (its fingerprint differs)
    with pytest.raises(ValueError):
        DEFENSES.create("emn", **SMALL, init="uniform").protect(data, [llava], checkpoint=ckpt)
    gc.collect()
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # the stores' folders are gone


def test_disk_deltas_error_bounds_and_cleanup(tmp_path):
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    values = [(torch.rand((3, 5, 7), generator=g) * 2 - 1) * eps, (torch.rand((3, 4, 4), generator=g) * 2 - 1) * eps]
    bounds = {"float32": 0.0, "float16": eps / 2048, "uint8": eps / 254 * (1 + 1e-5)}
    for dtype, bound in bounds.items():
        store = DiskDeltas([tuple(v.shape) for v in values], eps, dtype, tmp_path)
        folder = store.folder
        assert os.path.dirname(folder) == str(tmp_path)
        for i, v in enumerate(values):
            store[i] = v
        for i, v in enumerate(values):
            assert store[i].dtype == torch.float32 and store[i].shape == v.shape
            assert float((store[i] - v).abs().max()) <= bound
        assert float(store[-1].abs().max()) <= eps * (1 + 2 ** -11)
        copy = DiskDeltas([tuple(v.shape) for v in values], eps, dtype)
        copy.load_raw(store.raw().clone())
        assert all(torch.equal(copy[i], store[i]) for i in range(2))
        with pytest.raises(ValueError, match="shape"):
            store[0] = torch.zeros(3, 4, 4)
        with pytest.raises(IndexError):
            store[2]
        store.close()
        copy_folder = copy.folder
        del copy
        gc.collect()
        assert not os.path.exists(folder) and not os.path.exists(copy_folder)


@pytest.mark.parametrize("bad, message", [
    ({"store": "ssd"}, "store must be one of"),
    ({"store": "disk", "store_dtype": "int4"}, "store_dtype must be one of"),
    ({"store_dir": "/tmp"}, "only used with store='disk'"),
    ({"store": "disk", "store_dir": 5}, "store_dir must be a folder path"),
])
def test_bad_store_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        DEFENSES.create("emn", **bad)


def test_missing_store_dir_is_named(data, llava, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere.*not an existing folder"):
        DEFENSES.create("emn", **SMALL, store="disk", store_dir=str(missing)).protect(data, [llava])


def test_lazy_dataset_gives_the_eager_release(llava_json, digits_small, llava):
    path = llava_json(digits_small[0], 8)
    eager, lazy = load_dataset(path), load_dataset(path, lazy=True)
    assert all(isinstance(s, LazyVQASample) and isinstance(s.image_source, ImageFile) for s in lazy)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(eager, lazy))
    moved = lazy[0].with_(question="what?")
    assert isinstance(moved.image_source, ImageFile) and moved.question == "what?"
    replaced = lazy[0].with_(image=np.zeros((4, 4, 3), np.uint8))
    assert type(replaced) is VQASample and replaced.image.shape == (4, 4, 3)
    cfg = {**SMALL, **RUNS["mmguard_bph"][1]}
    a = DEFENSES.create("mmguard_bph", **cfg).protect(eager, [llava])
    b = DEFENSES.create("mmguard_bph", **cfg).protect(lazy, [llava])
    c = DEFENSES.create("mmguard_bph", **cfg, store="disk", store_dtype="float32").protect(lazy, [llava])
    assert _same(a, b) and _same(a, c)
    assert all(isinstance(s.image_source, ImageFile) for s in lazy)  # protection decoded, never kept


def test_lazy_perturbation_holds_no_pixels(llava_json, digits_small, llava):
    run = DEFENSES.create("emn", **SMALL, store="disk").begin(load_dataset(llava_json(digits_small[0], 4), lazy=True),
                                                                [llava])
    pert = run.pert
    assert isinstance(pert.x, CleanPixels) and isinstance(pert.delta, DiskDeltas)
    assert not isinstance(pert.proposals(), list) and len(pert.proposals()) == 4
    idx = torch.tensor([2, 0])
    assert torch.equal(pert.proposals()[2], pert.pixels(idx)[0])
    pert.set_deltas(idx, torch.full((2, 3, 32, 32), 1 / 255))
    assert torch.allclose(pert.deltas(idx), torch.full((2, 3, 32, 32), 1 / 255), atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_lazy_bad_image_raises_the_same_error_on_access(llava_json, digits_small, damage):
    path = llava_json(digits_small[0], 3)
    image = path.parent / "img" / "1.png"
    if damage == "truncate":
        image.write_bytes(image.read_bytes()[:40])
    else:
        image.unlink()
    with pytest.raises(DataError) as eager:
        load_dataset(path)
    lazy = load_dataset(path, lazy=True)  # paths only: nothing is read yet
    lazy[0].image
    with pytest.raises(DataError) as on_access:
        lazy[1].image
    assert str(on_access.value) == str(eager.value) and "1.png" in str(on_access.value)


def test_cli_stream_gives_the_same_release(llava_json, digits_small, tiny_llava_dir, tmp_path):
    data = llava_json(digits_small[0], 6)
    common = ["protect", "--defense", "emn", "--surrogate", str(tiny_llava_dir), "--data", str(data), "--quiet",
              "--set", "rounds=1", "--set", "train_steps=1", "--set", "pgd_steps=1", "--set", "eval_size=4"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out", str(tmp_path / "stream"), "--stream", "--set", "store_dtype=float32"]) == 0
    plain, stream = read_release(tmp_path / "plain"), read_release(tmp_path / "stream")
    assert all(np.array_equal(a.image, b.image) for a, b in zip(plain, stream))
    import json
    assert json.loads((tmp_path / "stream" / "manifest.json").read_text())["config"]["store"] == "disk"
