"""Build time of the procedural VQA task: 2,000 train + 500 test samples at 48 px (render, dedupe, ask).

Run: ``python -m pytest benchmarks/test_dataset_build.py``; expect about a second on one CPU core
(10k samples take a few seconds).
"""
from toolkit.datasets import DATASETS


def test_scenes_build(benchmark):
    train, test = benchmark.pedantic(lambda: DATASETS.create("scenes", n_train=2000, n_test=500).build(),
                                     rounds=1, iterations=1)
    assert len(train) == 2000 and len(test) == 500
