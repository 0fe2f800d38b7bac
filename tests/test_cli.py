import json

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main, parse_number
from toolkit.release import read_release


@pytest.fixture()
def user_data(llava_json, digits_small):
    return llava_json(digits_small[0], 6)


def test_protect_writes_release(user_data, tiny_llava_dir, tmp_path):
    out = tmp_path / "release"
    rc = main(["protect", "--defense", "emn", "--surrogate", str(tiny_llava_dir), "--data", str(user_data),
               "--out", str(out), "--eps", "8/255", "--quiet", "--set", "rounds=1", "--set", "train_steps=1",
               "--set", "pgd_steps=1", "--set", "eval_size=4"])
    assert rc == 0
    released = read_release(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(released) == 6 and manifest["defense"] == "emn" and manifest["surrogates"][0]["family"] == "llava"
    src = [np.asarray(Image.open(user_data.parent / "img" / f"{i}.png").convert("RGB")) for i in range(6)]
    assert max(np.abs(r.image.astype(int) - s.astype(int)).max() for r, s in zip(released, src)) <= 8


def test_protect_llava_format_then_verify(user_data, tiny_llava_dir, tmp_path, capsys):
    out = tmp_path / "public"
    rc = main(["protect", "--defense", "mmguard_text", "--surrogate", str(tiny_llava_dir), "--data", str(user_data),
               "--out", str(out), "--format", "llava", "--quiet", "--set", "rounds=1", "--set", "max_trigger_tokens=2",
               "--set", "trigger_candidates=2"])
    assert rc == 0 and "llava layout" in capsys.readouterr().out
    records = json.loads((out / "data.json").read_text())
    assert [r["image"] for r in records] == [f"img/{i}.png" for i in range(6)]
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert main(["verify", str(out), "--source", str(user_data)]) == 0
    assert "verified 6 samples" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--defense", "nope"], "unknown defense 'nope'"),
    (["--defense", "random_noise", "--eps", "2"], "eps must be in"),
    (["--defense", "random_noise", "--set", "colour=3"], "unknown config key"),
])
def test_protect_bad_arguments_write_nothing(args, message, user_data, tmp_path, capsys):
    out = tmp_path / "release"
    rc = main(["protect", "--data", str(user_data), "--out", str(out), "--quiet"] + args)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_protect_bad_data_writes_nothing(tmp_path, capsys):
    (tmp_path / "d.json").write_text(json.dumps([{"id": "a", "image": "../x.png", "conversations": []}]))
    rc = main(["protect", "--defense", "random_noise", "--data", str(tmp_path / "d.json"),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "d.json" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_protect_refuses_to_overwrite_source(user_data, capsys):
    rc = main(["protect", "--defense", "random_noise", "--data", str(user_data), "--out", str(user_data.parent),
               "--quiet", "--overwrite"])
    assert rc == 2 and "source data folder" in capsys.readouterr().err


def test_parse_number():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("0.5") == 0.5


def test_train_purifier_cli(tmp_path, digits_small, capsys):
    pytest.importorskip("diffusers")
    root = tmp_path / "clean"
    root.mkdir()
    lines = []
    for i, s in enumerate(digits_small[1][:8]):
        Image.fromarray(s.image).save(root / f"{i}.png")
        lines.append(json.dumps({"id": s.id, "image": f"{i}.png", "question": s.question, "answer": s.answer}))
    (root / "clean.jsonl").write_text("\n".join(lines))
    out = tmp_path / "purifier"
    rc = main(["train-purifier", "--data", str(root / "clean.jsonl"), "--out", str(out), "--epochs", "1",
               "--channels", "8", "--timesteps", "20", "--quiet"])
    assert rc == 0 and (out / "unet").is_dir() and (out / "scheduler").is_dir()
    assert main(["train-purifier", "--data", str(root / "clean.jsonl"), "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_list_prints_every_registered_component_with_its_config(capsys):
    from toolkit import COUNTERMEASURES, DEFENSES, METRICS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("## defenses", "## countermeasures", "## surrogates", "## metrics", "## datasets"):
        assert heading in out
    for name in DEFENSES.names() + COUNTERMEASURES.names() + METRICS.names():
        assert f"\n{name}: " in out or out.startswith(f"{name}: ")
    assert main(["list", "countermeasures"]) == 0
    out = capsys.readouterr().out
    assert "jpeg: " in out and "quality=" in out and "fit keys: scorer" in out and "## " not in out
    assert main(["list", "metrics"]) == 0
    assert "trigger_length: " in capsys.readouterr().out


def test_a_checkpoint_without_chat_template_uses_the_family_format_or_the_users(user_data, tmp_path, caplog):
    import shutil

    from toolkit.surrogates import load_surrogate
    from toolkit.surrogates.tiny import build_tiny

    bare = tmp_path / "bare-llava"
    shutil.copytree(build_tiny("llava", tmp_path / "llava", seed=0), bare)
    (bare / "chat_template.jinja").unlink()
    with caplog.at_level("WARNING"):
        model = load_surrogate(bare)
        assert model.prompt_text("What digit is this?") == "USER: <image>\nWhat digit is this? ASSISTANT:"
    assert "has no chat template; using the llava prompt format" in caplog.text
    own = load_surrogate(bare, prompt_template="Q: {image} {question} A:")
    assert own.prompt_text("Why?") == "Q: <image> Why? A:"
    with pytest.raises(ValueError, match=r"\{image\} and \{question\} once each"):
        load_surrogate(bare, prompt_template="{question} only")
    rc = main(["protect", "--defense", "emn", "--surrogate", str(bare), "--data", str(user_data), "--out",
               str(tmp_path / "release"), "--quiet", "--set", "rounds=1", "--set", "train_steps=1",
               "--set", "pgd_steps=1", "--set", "eval_size=4"])
    assert rc == 0 and (tmp_path / "release" / "manifest.json").is_file()
    qwen3 = tmp_path / "bare-qwen3"
    shutil.copytree(build_tiny("qwen3_vl", tmp_path / "qwen3", seed=0), qwen3)
    (qwen3 / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template .* --prompt-template"):
        load_surrogate(qwen3).prompt_text("Why?")
