import json

import numpy as np
import pytest
from PIL import Image

from toolkit.data import DataError, VQASample, load_dataset, load_jsonl, load_llava_json
from toolkit.digits import DIGIT_WORDS, load_digits_vqa


def _png(path, value=100, size=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def _llava_record(i, image, answer="seven"):
    return {"id": f"s{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat digit is this?"},
                              {"from": "gpt", "value": answer}]}


def test_llava_json_loader(tmp_path):
    _png(tmp_path / "imgs" / "a.png", 10)
    _png(tmp_path / "imgs" / "b.png", 20)
    (tmp_path / "d.json").write_text(json.dumps([_llava_record(0, "imgs/a.png"), _llava_record(1, "imgs/b.png", "two")]))
    ds = load_dataset(tmp_path / "d.json")
    assert [s.id for s in ds] == ["s0", "s1"]
    assert ds[0].question == "What digit is this?" and ds[1].answer == "two"
    assert ds[0].image.shape == (10, 12, 3) and ds[0].image.dtype == np.uint8 and ds[1].image[0, 0, 0] == 20
    assert ds.root == tmp_path.resolve()


def test_jsonl_loader_keeps_choices_and_meta(tmp_path):
    _png(tmp_path / "x.png")
    rec = {"id": "q1", "image": "x.png", "question": "Which?", "answer": "cat", "choices": ["dog", "cat"], "src": "web"}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    ds = load_jsonl(tmp_path / "d.jsonl")
    assert ds[0].choices == ("dog", "cat") and ds[0].meta["src"] == "web"


def test_truncated_image_names_file(tmp_path):
    _png(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "d.json").write_text(json.dumps([_llava_record(0, "bad.png")]))
    with pytest.raises(DataError, match=r"bad\.png.*(unreadable|truncated)"):
        load_llava_json(tmp_path / "d.json")


def test_unreadable_image(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": 1, "image": "junk.png", "question": "q", "answer": "a"}))
    with pytest.raises(DataError, match="junk.png"):
        load_jsonl(tmp_path / "d.jsonl")


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_image_path_escaping_folder_rejected(tmp_path, bad):
    root = tmp_path / "data"
    _png(tmp_path / "outside.png")
    root.mkdir()
    (root / "d.json").write_text(json.dumps([_llava_record(0, bad)]))
    with pytest.raises(DataError, match="image"):
        load_llava_json(root / "d.json")


def test_missing_answer_names_record(tmp_path):
    _png(tmp_path / "a.png")
    rec = _llava_record(0, "a.png")
    rec["conversations"] = rec["conversations"][:1]
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    with pytest.raises(DataError, match=r"record 0 .*missing answer"):
        load_llava_json(tmp_path / "d.json")


def test_missing_answer_field_jsonl(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": 1, "image": "a.png", "question": "q"}))
    with pytest.raises(DataError, match=r"d\.jsonl:1.*'answer'"):
        load_jsonl(tmp_path / "d.jsonl")


def test_empty_dataset(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_llava_json(tmp_path / "d.json")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_jsonl(tmp_path / "e.jsonl")


def test_non_finite_image_values_rejected():
    img = np.zeros((4, 4, 3), np.float32)
    img[1, 1, 1] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        VQASample("x", img, "q", "a")


def test_sample_validation():
    with pytest.raises(DataError, match="answer"):
        VQASample("x", np.zeros((4, 4, 3), np.uint8), "q", "  ")
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        VQASample("x", np.zeros((4, 4, 4), np.uint8), "q", "a")


def test_digits_dataset_deterministic_and_real():
    train, test = load_digits_vqa(image_size=32, seed=0)
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 1 / 3) < 0.01
    assert not {s.id for s in train} & {s.id for s in test}
    s = train[0]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert (s.image[..., 0] == s.image[..., 2]).all()  # grey replicated to RGB
    assert s.question == "What digit is this?" and s.answer == DIGIT_WORDS[s.meta["label"]]
    assert set(train.answers) == set(DIGIT_WORDS)
    train2, _ = load_digits_vqa(image_size=32, seed=0)
    assert [x.id for x in train2] == [x.id for x in train]
    assert np.array_equal(train2[5].image, train[5].image)
    other, _ = load_digits_vqa(image_size=32, seed=1)
    assert [x.id for x in other] != [x.id for x in train]
    assert load_digits_vqa(image_size=48)[0][0].image.shape == (48, 48, 3)


def test_digits_parity_task_same_split():
    train, _ = load_digits_vqa(image_size=32, seed=0)
    parity, _ = load_digits_vqa(image_size=32, seed=0, task="parity")
    assert [s.id for s in parity] == [s.id for s in train]
    assert {s.answer for s in parity} == {"even", "odd"}
    assert all((s.answer == "even") == (s.meta["label"] % 2 == 0) for s in parity)
    with pytest.raises(ValueError, match="task"):
        load_digits_vqa(task="colour")
