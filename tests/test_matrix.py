"""The matrix runner: cache hits, config changes, resume after a kill, error cells, threat models."""
import json
import os
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.data import DataError
from toolkit.matrix import MatrixError, MatrixSpec, load_spec, run_matrix, threat_model
from toolkit.reports import read_rows

EMN = {"rounds": 1, "train_steps": 1, "pgd_steps": 1, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 4}


def _spec(quality=10):
    return {
        "name": "unit",
        "data": {"source": "digits", "image_size": 32, "limit": 44, "attacker_clean": 8},
        "models": {"s": {"tiny": "llava", "seed": 0}, "v": {"tiny": "llava", "seed": 1},
                   "t": {"tiny": "timm", "seed": 0}},
        "defenses": [{"name": "random_noise"},
                     {"label": "emn", "name": "emn", "surrogates": ["s"], "config": EMN},
                     {"label": "mem-on-timm", "name": "mem", "surrogates": ["t"], "config": EMN}],
        "countermeasures": [{"label": "jpeg", "name": "jpeg", "config": {"quality": quality}},
                            {"label": "lightshed", "name": "lightshed", "config": {"epochs": 2}},
                            {"label": "mix+filter", "name": "mix_clean+trigger_filter",
                             "config": {"mix_clean": {"ratio": 0.25}}},
                            {"label": "filter", "name": "trigger_filter"}],
        "victims": ["s", "v"],
        "finetune": {"mode": "full", "epochs": 1, "batch_size": 16},
        "seeds": [0],
    }


def _acc(rows):
    return {(r["defense"], r["countermeasure"], r["victim"]): r.get("accuracy") for r in rows}


def _computed(out):
    return json.loads((out / "last_run.json").read_text())["computed"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix") / "a"
    rows = run_matrix(_spec(), out, progress=False)
    return out, rows


def test_rows_controls_errors_and_threat_models(first_run):
    out, rows = first_run
    assert len(rows) == 4 * 5 * 2  # (clean + 3 defenses) x (none + 4) x 2 victims
    by = {(r["defense"], r["countermeasure"], r["victim"]): r for r in rows}
    assert by[("clean", "none", "v")]["error"] is None and 0 <= by[("clean", "none", "v")]["accuracy"] <= 1
    assert by[("emn", "none", "s")]["threat_model"] == "white-box"
    assert by[("emn", "jpeg", "v")]["threat_model"] == "gray-box"
    assert by[("clean", "none", "s")]["threat_model"] == "-"
    # MEM needs text/token gradients a timm classifier lacks: error rows, the rest goes on
    mem = [r for r in rows if r["defense"] == "mem-on-timm"]
    assert all(r["stage"] == "protect" and "token_grad" in r["error"] for r in mem)
    # LightShed imitates the row's own defense: the clean row has none -> an error cell at transform
    assert all(r["stage"] == "transform" and "no defense to imitate" in r["error"]
               for r in rows if r["defense"] == "clean" and r["countermeasure"] == "lightshed")
    fitted = by[("emn", "lightshed", "v")]
    assert fitted["error"] is None and 0 <= fitted["detection_auroc"] <= 1
    assert by[("emn", "mix+filter", "v")]["error"] is None
    assert by[("emn", "mix+filter", "v")]["trigger_filter_threshold"] is not None
    # no defense here inserts words: the filter changes nothing and its cells reuse the 'none' fine-tunes
    for d in ("clean", "random_noise", "emn"):
        assert by[(d, "filter", "v")]["accuracy"] == by[(d, "none", "v")]["accuracy"]
    assert by[("emn", "jpeg", "s")]["psnr"] > 25 and by[("emn", "jpeg", "s")]["versions"]["torch"]
    md = (out / "results.md").read_text()
    assert "victim: v" in md and "error:" in md
    assert (out / "heatmap-v.png").stat().st_size > 1000 and (out / "results.csv").is_file()


def test_rerun_hits_cache(first_run):
    out, rows = first_run
    again = run_matrix(_spec(), out, progress=False)
    assert _computed(out) == {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}
    assert _acc(again) == _acc(rows)


def test_a_damaged_cache_entry_is_detected_and_recomputed(first_run, caplog):
    out, rows = first_run
    protect = out / "cache" / "protect"
    entry = next(e for e in sorted(protect.iterdir()) if (e / "release" / "images").is_dir())
    png = sorted((entry / "release" / "images").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:40])  # a truncated file (a full disk, a bad copy)
    with caplog.at_level("WARNING"):
        again = run_matrix(_spec(), out, progress=False)
    assert "is damaged" in caplog.text and "changed since it was written" in caplog.text
    assert _computed(out)["protect"] == 1  # that protection, and only it, was rebuilt
    assert _acc(again) == _acc(rows)
    (entry / "digests.json").unlink()  # an entry from before digests were recorded is still used
    run_matrix(_spec(), out, progress=False)
    assert _computed(out) == {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}


def test_changed_config_misses_only_what_depends_on_it(first_run, tmp_path):
    out, _ = first_run
    run_matrix(_spec(quality=30), out, progress=False)
    # jpeg quality changed: 3 protected sets re-transformed (clean, random, emn), 6 fine-tunes; no protect
    assert _computed(out) == {"protect": 0, "transform": 3, "pretrain": 0, "finetune": 6}


def test_killed_run_resumes_to_the_same_table(first_run, tmp_path, monkeypatch):
    from toolkit.attacks.finetune import FineTune

    original = FineTune.__call__
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    out = tmp_path / "b"
    monkeypatch.setattr(FineTune, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(_spec(), out, progress=False)
    monkeypatch.setattr(FineTune, "__call__", original)
    rows = run_matrix(_spec(), out, progress=False)
    # killed in the 4th fine-tune (clean / jpeg / v): the clean cells' three fine-tunes and the clean
    # set's JPEG transform had finished and are not recomputed; both protections come after the kill.
    # Transforms: 3 (clean) + 4 + 4 (random, emn), the clean JPEG done; fine-tunes: 22 cells (the clean
    # LightShed cells are errors, the unchanged 'filter' sets reuse 'none') minus 3 done
    assert _computed(out) == {"protect": 2, "transform": 11 - 1, "pretrain": 0, "finetune": 22 - 3}
    assert _acc(rows) == _acc(first_run[1])


def test_threat_model_labels():
    fam = {"a": "llava", "b": "llava", "c": "qwen2_vl"}
    assert threat_model("a", ["a"], fam) == "white-box"
    assert threat_model("b", ["a"], fam) == "gray-box"
    assert threat_model("c", ["a"], fam) == "black-box"
    assert threat_model("c", ["a", "c"], fam) == "white-box"
    assert threat_model("b", ["c", "a"], fam) == "gray-box"


@pytest.mark.parametrize("patch, message", [
    ({"victims": ["nope"]}, "victims: unknown model"),
    ({"defenses": [{"name": "emn", "surrogates": ["x"]}]}, "unknown model 'x'"),
    ({"defenses": [{"name": "emn"}]}, "needs at least one surrogate"),
    ({"defenses": [{"name": "zap"}]}, "unknown defense 'zap'"),
    ({"defenses": [{"name": "emn", "surrogates": ["s"], "config": {"rounds": -1}}]}, "rounds must be"),
    ({"countermeasures": [{"name": "jpeg", "config": {"qualty": 3}}]}, "unknown config key"),
    ({"colour": 1}, "unknown spec keys"),
    ({"metrics": ["vibes"]}, "unknown"),
    ({"data": {"source": "digits"}, "countermeasures": [{"name": "trigger_filter"}]}, "set data.attacker_clean"),
    ({"countermeasures": [{"name": "trigger_filter", "fit": {"runs": 2}}]}, r"fit: unknown keys \['runs'\]"),
    ({"countermeasures": [{"name": "trigger_filter", "fit": {"scorer": "gpt"}}]}, "fit.scorer"),
    ({"countermeasures": [{"name": "lightshed", "fit": {"defense": "tue"}}]}, "fit.defense"),
    ({"countermeasures": [{"name": "lightshed", "fit": {"surrogates": ["q"]}}]}, "unknown model 'q'"),
    ({"data": {"source": "digits", "attacker_clean": -3}}, "data.attacker_clean"),
    ({"finetune": {"mode": "sideways"}}, "finetune:"),
    ({"finetune": {"pretrain": {"task": "chess"}}}, "finetune.pretrain.task"),
    ({"finetune": {"pretrain": {"task": "numeral", "data": "x.jsonl"}}}, "exactly one of"),
    ({"data": {"source": "digits"}, "countermeasures": [], "finetune": {"pretrain": {"task": "numeral"}}},
     "set data.attacker_clean"),
    ({"finetune": {"pretrain": {"task": "numeral", "epoch": 3}}}, "finetune.pretrain"),
    ({"zero_shot": "yes"}, "zero_shot: true or false"),
    ({"defenses": [{"label": "zero-shot", "name": "random_noise"}]}, "reserved"),
    ({"defenses": [{"name": "random_noise", "limt": 60}]}, r"defenses\[0\]: unknown keys \['limt'\]"),
    ({"countermeasures": [{"name": "jpeg", "confg": {}}]}, r"countermeasures\[0\]: unknown keys \['confg'\]"),
    ({"defenses": "random_noise"}, "defenses: a list of entries"),
    ({"defenses": [7]}, r"defenses\[0\]: a name or a mapping"),
    ({"seeds": "1"}, "seeds: an int or a list of them"),
    ({"seeds": [0, True]}, "seeds: an int or a list of them"),
    ({"victims": [3]}, "victims: a string or a list of them"),
    ({"data": {"source": "digits", "limt": 60}}, r"data: digits: unknown config key\(s\) \['limt'\]"),
    ({"data": True}, "data: a mapping"),
    ({"models": {"s": {"tiny": "llava", "seedd": 1}, "v": {"tiny": "llava"}}},
     r"models.s: unknown keys \['seedd'\] for a tiny llava"),
    ({"models": {"s": {"tiny": "lava"}, "v": {"tiny": "llava"}}}, r"models.s.tiny: unknown family 'lava'"),
    ({"models": {"s": {"tiny": "llava", "seed": "x"}, "v": {"tiny": "llava"}}}, r"models.s.seed: an int"),
    ({"defenses": [{"name": "emn", "surrogates": ["s"], "config": {"rounds": 0}}]}, r"defenses\[0\]\.config: rounds"),
])
def test_bad_specs(patch, message):
    with pytest.raises((MatrixError, TypeError, ValueError), match=message):
        MatrixSpec.from_dict({**_spec(), **patch})


def test_train_and_test_files_without_a_source_are_the_data(tmp_path):
    """The quoted failure: data {train, test} without source silently trained on the built-in digits."""
    from toolkit.matrix.spec import data_source

    assert data_source({"train": "a.json", "test": "b.json"}) == "files"
    assert data_source({}) == "digits"
    spec = {**_spec(), "data": {"train": str(tmp_path / "none.json"), "test": str(tmp_path / "none.json")},
            "defenses": [], "countermeasures": []}
    with pytest.raises(DataError, match="none.json: dataset file not found"):
        run_matrix(spec, tmp_path / "run", progress=False)  # it reads the files (and says they are missing)


def test_scalars_and_bare_names_where_lists_of_entries_are_expected():
    spec = MatrixSpec.from_dict({**_spec(), "seeds": 1, "victims": "v", "metrics": "accuracy",
                                 "defenses": ["random_noise", {"label": "emn", "name": "emn", "surrogates": "s",
                                                               "config": EMN}],
                                 "countermeasures": ["jpeg"]})
    assert spec.seeds == (1,) and spec.victims == ("v",) and spec.metric_names == ("accuracy",)
    assert [d.label for d in spec.defenses] == ["clean", "random_noise", "emn"]
    assert spec.defenses[2].surrogates == ("s",)
    assert [c.label for c in spec.countermeasures] == ["none", "jpeg"]


def test_fractions_in_component_configs_are_numbers():
    spec = MatrixSpec.from_dict({**_spec(), "defenses": [{"name": "random_noise", "config": {"eps": "8/255"}}],
                                 "countermeasures": [{"name": "jpeg+trigger_filter",
                                                      "config": {"jpeg": {"quality": 10}}}]})
    assert spec.defenses[1].config == {"eps": 8 / 255}
    with pytest.raises(MatrixError, match="division by zero"):
        MatrixSpec.from_dict({**_spec(), "defenses": [{"name": "random_noise", "config": {"eps": "8/0"}}]})


def test_packaged_demo_spec_and_cli_report(first_run, capsys):
    spec = load_spec("demo")
    assert spec.name == "demo" and spec.victims == ("victim",) and len(spec.defenses) == 7
    out, _ = first_run
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").is_file() and "victim: s" in capsys.readouterr().out
    assert read_rows(out)


def test_second_spec_shares_the_cache(first_run, tmp_path):
    out, rows = first_run
    spec = {**_spec(), "name": "subset", "countermeasures": [{"label": "jpeg", "name": "jpeg", "config": {"quality": 10}}]}
    spec["defenses"] = spec["defenses"][1:2]
    again = run_matrix(spec, tmp_path / "c", progress=False, cache=out / "cache")
    assert _computed(tmp_path / "c") == {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}
    assert _acc(again).items() <= _acc(rows).items()


def test_pretrained_victim_recipe(tmp_path):
    """A victim pretrained on a disjoint task (numerals of the attacker's images) before LoRA."""
    spec = {**_spec(), "name": "pretrain", "countermeasures": [],
            "defenses": [{"name": "random_noise"}], "victims": ["v"],
            "finetune": {"mode": "lora", "epochs": 1, "batch_size": 16,
                         "pretrain": {"task": "numeral", "epochs": 1, "batch_size": 8}}}
    rows = run_matrix(spec, tmp_path / "p", progress=False)
    assert all(r["error"] is None for r in rows) and len(rows) == 2
    # one pretraining per (victim, seed), shared by both training sets
    assert _computed(tmp_path / "p") == {"protect": 1, "transform": 0, "pretrain": 1, "finetune": 2}
    folder = next((tmp_path / "p" / "cache" / "pretrain").iterdir()) / "model"
    assert (folder / "config.json").is_file()


def test_zero_shot_rows_score_the_victim_before_fine_tuning(tmp_path):
    """One zero-shot row per victim and seed, the un-fine-tuned model's accuracy, cached like every stage."""
    from toolkit.digits import load_digits_vqa
    from toolkit.metrics import evaluate_answers
    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny import build_tiny

    spec = {**_spec(), "name": "zs", "countermeasures": [], "defenses": [{"name": "random_noise"}],
            "victims": ["v"], "zero_shot": True}
    rows = run_matrix(spec, tmp_path / "z", progress=False)
    zero = [r for r in rows if r["defense"] == "zero-shot"]
    assert len(zero) == 1 and zero[0]["error"] is None and zero[0]["countermeasure"] == "none"
    _, test = load_digits_vqa(image_size=32, limit=44, seed=0)
    direct, _ = evaluate_answers(load_surrogate(build_tiny("llava", tmp_path / "v", seed=1)), test)
    assert zero[0]["accuracy"] == direct
    assert (tmp_path / "z" / "results.md").read_text().count("zero-shot") == 1
    again = run_matrix(spec, tmp_path / "z", progress=False)
    assert [r["accuracy"] for r in again if r["defense"] == "zero-shot"] == [direct]
    assert len(list((tmp_path / "z" / "cache" / "zero_shot").iterdir())) == 1


BENCHMARK_SPECS = sorted((Path(__file__).parents[1] / "benchmarks" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", BENCHMARK_SPECS, ids=lambda p: p.stem)
def test_benchmark_specs_validate(path):
    """Every shipped benchmark spec parses and validates (defense configs, models, fits) without work; what a
    spec's plugins register is unregistered afterwards, so the registries stay as the package defines them."""
    from toolkit.attacks import COUNTERMEASURES
    from toolkit.defenses import DEFENSES
    from toolkit.metrics import METRICS

    registries = (DEFENSES, COUNTERMEASURES, METRICS)
    before = [set(r.names()) for r in registries]
    try:
        spec = load_spec(path)
        assert spec.defenses and spec.victims and spec.seeds
    finally:
        for registry, names in zip(registries, before):
            for name in set(registry.names()) - names:
                registry.unregister(name)


def test_threat_model_sees_the_same_weights_under_another_name():
    families = {"s": "llava", "v": "llava", "w": "llava", "q": "qwen2_vl"}
    identities = {"s": {"zoo": "llava-a"}, "v": {"zoo": "llava-a"}, "w": {"zoo": "llava-b"}, "q": {"zoo": "qwen2vl-a"}}
    assert threat_model("v", ["s"], families, identities) == "white-box"
    assert threat_model("v", ["s"], families) == "gray-box"  # without identities only names are compared
    assert threat_model("w", ["s"], families, identities) == "gray-box"
    assert threat_model("q", ["s"], families, identities) == "black-box"
    assert threat_model("q", [], families, identities) == "-"


def test_an_interrupted_run_keeps_the_finished_rows_and_reports_them(tmp_path, monkeypatch, capsys):
    import torch

    from toolkit.cli import main
    from toolkit.matrix import Stages

    spec = _spec()
    spec["defenses"] = spec["defenses"][:1]
    spec["countermeasures"] = spec["countermeasures"][:1]
    real, calls = Stages.finetune, []

    def finetune_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Stages, "finetune", finetune_then_ctrl_c)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    threads = torch.get_num_threads()
    try:
        rc = main(["matrix", str(tmp_path / "spec.json"), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # one line (--quiet: no bars either)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["error"] is None and r["n_test"] > 0 for r in rows)
    assert main(["report", str(tmp_path / "run")]) == 0  # the partial run renders
    assert (tmp_path / "run" / "results.md").is_file()


def _slow_commit(args):
    import time

    from toolkit.matrix import StageCache

    root, log = args

    def build(tmp):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (tmp / "out.txt").write_text("x")
        return {"by": os.getpid()}

    return StageCache(Path(root)).commit("stage", "key", build)


def test_two_processes_sharing_a_cache_build_an_entry_once(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        metas = pool.map(_slow_commit, [(str(tmp_path), str(tmp_path / "log"))] * 2)
    assert (tmp_path / "log").read_text() == "built\n"  # the second process waited and reused it
    assert metas[0] == metas[1] and (tmp_path / "stage" / "key" / "out.txt").read_text() == "x"


def test_a_folder_with_another_specs_results_is_refused_unless_forced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"name": "someone-else"}))
    (out / "rows.jsonl").write_text('{"kept": true}\n')
    with pytest.raises(MatrixError, match="holds the results of spec 'someone-else', not 'unit'.*--force"):
        run_matrix(_spec(), out, progress=False)
    assert (out / "rows.jsonl").read_text() == '{"kept": true}\n'  # nothing touched
    assert main(["matrix", str(_write_spec(tmp_path)), "--out", str(out), "--quiet"]) == 2


def _write_spec(tmp_path):
    path = tmp_path / "unit.json"
    path.write_text(json.dumps(_spec()))
    return path


def test_relative_paths_in_a_spec_file_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    spec = {"data": {"train": "data/train.json", "test": "data/test.json"},
            "models": {"v": {"tiny": "llava"}, "mine": {"path": "ckpt/llava"}, "home": {"path": "~/ckpt"}},
            "victims": ["v"], "finetune": {"pretrain": {"data": "data/pre.json", "epochs": 1}}}
    (folder / "spec.yaml").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)  # another working directory
    parsed = load_spec("project/spec.yaml")
    base = folder.resolve()
    assert parsed.data["train"] == str(base / "data/train.json") and parsed.data["test"] == str(base / "data/test.json")
    assert parsed.models["mine"]["path"] == str(base / "ckpt/llava") and parsed.models["home"]["path"] == "~/ckpt"
    assert parsed.finetune["pretrain"]["data"] == str(base / "data/pre.json")


def test_two_sharded_workers_on_one_folder_run_every_cell_once(tmp_path):
    """Two processes (`--shard 0/2`, `--shard 1/2`) share an output folder and its cache; the merged report
    equals an unsharded run's, cell for cell."""
    import subprocess
    import sys

    spec = _spec()
    spec["defenses"] = spec["defenses"][:2]
    spec["countermeasures"] = [spec["countermeasures"][0]]
    spec["seeds"] = [0, 1]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main(sys.argv[1:]))",
           "matrix", str(path), "--out", str(tmp_path / "shared"), "--quiet", "--threads", "1", "--shard"]
    workers = [subprocess.Popen(cmd + [f"{i}/2"], env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert all(w.wait(timeout=900) == 0 for w in workers), [w.stderr.read()[-2000:] for w in workers]
    merged = read_rows(tmp_path / "shared")
    alone = run_matrix(spec, tmp_path / "alone", progress=False, cache=tmp_path / "shared" / "cache")
    key = lambda r: (r["seed"], r["defense"], r["countermeasure"], r["victim"])  # noqa: E731
    assert sorted(map(key, merged)) == sorted(map(key, alone)) and len(merged) == 2 * 3 * 2 * 2
    assert {key(r): r["accuracy"] for r in merged} == {key(r): r["accuracy"] for r in alone}
    assert _computed(tmp_path / "alone") == {"protect": 0, "transform": 0, "pretrain": 0, "finetune": 0}
    assert sorted(p.name for p in (tmp_path / "shared").glob("rows*.jsonl")) == \
        ["rows-shard-0-of-2.jsonl", "rows-shard-1-of-2.jsonl"]
    assert main(["report", str(tmp_path / "shared")]) == 0


@pytest.mark.parametrize("text", ["2/2", "a/2", "1", "-1/2"])
def test_bad_shard_arguments_are_named(text):
    from toolkit.cli import parse_shard

    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("model, message", [
    ({"path": "ckpt", "prompt_template": "no fields"}, r"models\.v\.prompt_template: prompt template must contain"),
    ({"path": "ckpt", "prompt": "x"}, r"models\.v: unknown keys \['prompt'\] for a path model"),
])
def test_path_models_take_a_checked_prompt_template(model, message):
    with pytest.raises(MatrixError, match=message):
        MatrixSpec.from_dict({"models": {"v": model}, "victims": ["v"]})
    ok = MatrixSpec.from_dict({"models": {"v": {"path": "ckpt", "prompt_template": "{image} {question}"}},
                               "victims": ["v"]})
    assert ok.models["v"]["prompt_template"] == "{image} {question}"
