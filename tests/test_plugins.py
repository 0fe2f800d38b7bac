"""Plugins: the guide's examples (docs/EXTENDING.md) as an installed package (entry points), as a ``--plugin``
file and as a spec's ``plugins:``; re-registration and the Config-decorator check."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from toolkit.registry import Config, Registry, import_plugin

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "EXTENDING.md"
PLUGIN_NAMES = {"defenses": ["classwise_patch", "smooth_emn"], "countermeasures": ["posterize_text", "clip_to_attacker_range"],
                "metrics": ["question_words"], "surrogates": ["tv_classifier"]}


def guide_code() -> str:
    """Every ``python`` block of the guide, in order: together they are one plugin module."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 4, "the guide lost its worked examples"
    return "\n\n".join(blocks)


def _unregister_guide() -> None:
    """Forget the guide's classes (a test that imported the guide in this process cleans up)."""
    from toolkit.attacks import COUNTERMEASURES
    from toolkit.defenses import DEFENSES
    from toolkit.metrics import METRICS
    from toolkit.surrogates import SURROGATES

    for registry, names in ((DEFENSES, "defenses"), (COUNTERMEASURES, "countermeasures"), (METRICS, "metrics"),
                            (SURROGATES, "surrogates")):
        for name in PLUGIN_NAMES[names]:
            if name in registry:
                registry.unregister(name)


def _install(site: Path) -> None:
    """Install the guide's code as a distribution with entry points (what pip writes, without pip)."""
    site.mkdir(parents=True)
    (site / "my_plugin.py").write_text(guide_code())
    info = site / "my_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[mmguard.{group}]\n" + "".join(f"{n} = my_plugin\n" for n in names) + "\n"
        for group, names in PLUGIN_NAMES.items()))


def _cli(args, site=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main(sys.argv[1:]))",
                           *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_an_installed_plugin_package_runs_in_a_matrix_from_the_cli(tmp_path):
    _install(tmp_path / "site")
    spec = {"name": "plugin", "data": {"source": "digits", "image_size": 32, "limit": 30, "attacker_clean": 6},
            "models": {"v": {"tiny": "llava", "seed": 1}},
            "defenses": [{"name": "classwise_patch", "config": {"eps": "8/255", "density": 0.5}}],
            "countermeasures": ["posterize_text", {"label": "clip", "name": "clip_to_attacker_range",
                                                   "fit": {"margin": 20}}],
            "victims": ["v"], "metrics": ["accuracy", "linf", "question_words"],
            "finetune": {"mode": "full", "epochs": 1, "batch_size": 16}, "seeds": [0]}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    done = _cli(["matrix", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--quiet"], site=tmp_path / "site")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    patched = [r for r in rows if r["defense"] == "classwise_patch"]
    assert len(patched) == 3 and all(abs(r["linf"] - 8 / 255) < 1e-6 for r in patched)
    assert {r["countermeasure"] for r in rows} == {"none", "posterize_text", "clip"}
    assert all(r["fitted_low"] == 20 for r in rows if r["countermeasure"] == "clip")
    assert all(r["question_words"] == 4.0 for r in rows)


def test_the_plugin_option_imports_a_file_for_protect(tmp_path, digits_small, llava_json):
    (tmp_path / "my_plugin.py").write_text(guide_code())
    train = llava_json(digits_small[0], 8)
    args = ["protect", "--defense", "classwise_patch", "--data", str(train),
            "--out", str(tmp_path / "release"), "--set", "density=0.25", "--quiet"]
    without = _cli(args)
    assert without.returncode != 0 and "unknown defense 'classwise_patch'" in without.stderr
    done = _cli(args + ["--plugin", str(tmp_path / "my_plugin.py")])
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "release" / "manifest.json").read_text())
    assert manifest["defense"] == "classwise_patch" and manifest["config"]["density"] == 0.25


def test_a_specs_plugins_key_imports_before_validation(tmp_path):
    from toolkit.matrix import MatrixError, MatrixSpec

    (tmp_path / "my_plugin.py").write_text(guide_code())
    spec = {"plugins": str(tmp_path / "my_plugin.py"), "models": {"v": {"tiny": "llava"}}, "victims": ["v"],
            "defenses": ["classwise_patch"], "countermeasures": ["posterize_text"], "metrics": ["question_words"]}
    try:
        parsed = MatrixSpec.from_dict(spec)
        assert parsed.plugins == (str(tmp_path / "my_plugin.py"),)
        assert [d.name for d in parsed.defenses] == [None, "classwise_patch"]
    finally:
        _unregister_guide()
    with pytest.raises(MatrixError, match="plugins: cannot import 'no_such_plugin_module'"):
        MatrixSpec.from_dict({**spec, "plugins": ["no_such_plugin_module"]})


def test_the_guides_min_min_defense_smooths_its_noise(tmp_path, digits_small, llava):
    from toolkit.defenses import DEFENSES

    (tmp_path / "my_guide.py").write_text(guide_code())
    import_plugin(str(tmp_path / "my_guide.py"))
    try:
        data = digits_small[0][:8]
        fast = {"rounds": 1, "train_steps": 1, "pgd_steps": 4, "batch_size": 8, "pgd_batch_size": 8, "eval_size": 8,
                "init": "uniform"}

        def variation(weight):
            out = DEFENSES.create("smooth_emn", **fast, tv_weight=weight).protect(data, [llava])
            d = [torch.as_tensor(x) for x in out.deltas()]  # (H, W, 3)
            return sum(float((x[1:] - x[:-1]).abs().sum() + (x[:, 1:] - x[:, :-1]).abs().sum()) for x in d)
        assert variation(100.0) < 0.8 * variation(0.0)  # the penalty is what the hook adds
    finally:
        _unregister_guide()


def test_the_guides_surrogate_family_loads_protects_and_learns(tmp_path):
    from toolkit.attacks import FineTune
    from toolkit.defenses import DEFENSES
    from toolkit.digits import DIGIT_WORDS, load_digits_vqa
    from toolkit.metrics import evaluate_answers
    from toolkit.surrogates import load_surrogate

    (tmp_path / "my_family.py").write_text(guide_code())
    module = import_plugin(str(tmp_path / "my_family.py"))
    try:
        folder = module.build_tv_classifier(tmp_path / "tvc", DIGIT_WORDS)
        model = load_surrogate(folder)  # found by config.json's model_type
        assert type(model).__name__ == "TorchvisionClassifier" and model.image_size == (32, 32)
        train, test = load_digits_vqa(image_size=32, limit=80, seed=0)
        protected = DEFENSES.create("emn", rounds=1, train_steps=1, pgd_steps=2, batch_size=8, pgd_batch_size=8,
                                    eval_size=8).protect(train[:8], [model])
        assert len(protected.dataset) == 8
        before, _ = evaluate_answers(model, test)
        FineTune(mode="full", epochs=3, lr=1e-3, batch_size=16)(model, train)
        after, _ = evaluate_answers(model, test)
        assert after > max(0.3, before + 0.15)  # it really trains (chance is 0.1)
        model.save(tmp_path / "saved")
        model.reinitialize(1)
        assert evaluate_answers(load_surrogate(tmp_path / "saved"), test)[0] == after
    finally:
        _unregister_guide()


def test_reregistering_the_same_class_replaces_it_and_another_class_is_refused(tmp_path):
    reg = Registry("thing")
    source = ("from dataclasses import dataclass\nfrom toolkit.registry import Config\n"
              "def define(reg, value):\n"
              "    @reg.register('a')\n"
              "    class A:\n"
              "        VALUE = value\n"
              "    return A\n")
    (tmp_path / "notebook_cell.py").write_text(source)
    module = import_plugin(str(tmp_path / "notebook_cell.py"))
    module.define(reg, 1)
    module.define(reg, 2)  # the same cell run again
    assert reg.get("a").VALUE == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_a_config_without_its_dataclass_decorator_is_named():
    reg = Registry("thing")

    class Forgot:
        class Config(Config):
            strength: float = 1.0

    with pytest.raises(TypeError, match=r"Forgot\.Config declares fields but is not a dataclass"):
        reg.register("forgot")(Forgot)

    class Fine:
        @dataclass(frozen=True, kw_only=True)
        class Config(Config):
            strength: float = 1.0

    assert reg.register("fine")(Fine) is Fine


def test_a_broken_plugin_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "broken-0.1.dist-info").mkdir(parents=True)
    (site / "broken-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (site / "broken-0.1.dist-info" / "entry_points.txt").write_text("[mmguard.things]\nbad = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(site))
    reg = Registry("thing")
    with pytest.warns(RuntimeWarning, match="mmguard.things plugin 'bad'.*failed to load"):
        assert reg.names() == []
    assert reg.load_plugins() == []  # once per process
