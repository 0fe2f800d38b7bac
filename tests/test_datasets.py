"""Procedural VQA datasets: determinism, disjoint splits, coverage of the grammar, answers vs the scene spec,
rendering, config validation, the `mmguard data` CLI and the matrix data sources."""
import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.data import SOURCE_RECORD, load_dataset
from toolkit.datasets import DATASETS, answer_words, render_spec, vocabulary
from toolkit.datasets import grammar, synthetic
from toolkit.datasets.grammar import ANSWER_WORDS, CAPTION_SUFFIXES, PREFIXES, QA_TYPES, STEMS, SUFFIXES, TYPES
from toolkit.datasets.scene import Layout, Scene, SceneObject, Sign
from toolkit.datasets.synthetic import (ANSWER_SKILL_TYPES, REFERENCE_SKILL_TYPES, RELATION_SKILL_TYPES, SKILL_TYPES,
                                        VERIFY_SKILL_TYPES, COUNT_SKILL_TYPES)
from toolkit.datasets.vocab import COL_WORDS, COLOURS, NUMBER_WORDS, ROW_WORDS, SHAPES, WORDS
from toolkit.digits import load_digits_vqa
from toolkit.metrics.accuracy import normalize_answer
from toolkit.matrix import MatrixError, MatrixSpec, Stages

DOWNSTREAM = ("colour", "shape", "count", "position", "exist", "read")
PRETRAIN = ("caption", "size", "text_colour")
SKILLS = ("shape_at", "first_letter", "last_letter")
#: every cell's place phrase in shape_at questions, written out independently of the grammar
PLACES = {
    2: {(0, 0): "in the top left corner", (0, 1): "in the top right corner",
        (1, 0): "in the bottom left corner", (1, 1): "in the bottom right corner"},
    3: {(0, 0): "in the top left corner", (0, 1): "in the middle of the top row", (0, 2): "in the top right corner",
        (1, 0): "in the middle of the left column", (1, 1): "in the center", (1, 2): "in the middle of the right column",
        (2, 0): "in the bottom left corner", (2, 1): "in the middle of the bottom row",
        (2, 2): "in the bottom right corner"},
}


def _digest(image):
    return hashlib.sha256(image.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def downstream():
    return DATASETS.create("scenes", n_train=2000, n_test=1, image_size=32).build()[0]


@pytest.fixture(scope="module")
def pretrain():
    return DATASETS.create("scenes_pretrain", n_train=2000, n_test=1, image_size=32).build()[0]


@pytest.fixture(scope="module")
def everything():
    """5000 samples of every question type."""
    return DATASETS.create("scenes", n_train=5000, n_test=1, image_size=32, types=TYPES, seed=11).build()[0]


def _same(a, b):
    def meta(s):  # a LLaVA-JSON loader also keeps the record it read (SOURCE_RECORD)
        return {k: v for k, v in s.meta.items() if k != SOURCE_RECORD}
    return (len(a) == len(b) and all(x.id == y.id and x.question == y.question and x.answer == y.answer
                                     and x.image.tobytes() == y.image.tobytes() and meta(x) == meta(y)
                                     for x, y in zip(a, b)))


# ------------------------------------------------------------------ determinism and splits
def test_same_seed_same_data_other_seed_other_data():
    make = lambda seed: DATASETS.create("scenes", n_train=60, n_test=30, image_size=32, seed=seed).build()
    (a_train, a_test), (b_train, b_test), (c_train, c_test) = make(3), make(3), make(4)
    assert _same(a_train, b_train) and _same(a_test, b_test)
    assert [s.question for s in a_train] != [s.question for s in c_train]
    assert {_digest(s.image) for s in a_train}.isdisjoint({_digest(s.image) for s in c_train})
    assert a_train[0].id == "scenes-train-000000" and a_test[29].id == "scenes-test-000029"
    assert a_train.name == "scenes-train" and {s.meta["split"] for s in a_test} == {"test"}


def test_pretrain_mix_has_its_own_seed_and_disjoint_types(downstream, pretrain):
    scenes, pre = DATASETS.create("scenes"), DATASETS.create("scenes_pretrain")
    assert set(scenes.config.types) == set(DOWNSTREAM) and set(pre.config.types) == set(PRETRAIN)
    assert set(scenes.config.types).isdisjoint(pre.config.types)
    assert scenes.config.seed != pre.config.seed
    assert {s.meta["qtype"] for s in downstream}.isdisjoint({s.meta["qtype"] for s in pretrain})
    # even with one seed, the two tasks draw different images
    a = DATASETS.create("scenes", n_train=50, n_test=1, seed=5, types=("read",)).build()[0]
    b = DATASETS.create("scenes_pretrain", n_train=50, n_test=1, seed=5, types=("read",)).build()[0]
    assert {_digest(s.image) for s in a}.isdisjoint({_digest(s.image) for s in b})


def test_train_and_test_images_are_disjoint():
    train, test = DATASETS.create("scenes", n_train=600, n_test=300, image_size=32, seed=2).build()
    assert len(train) == 600 and len(test) == 300
    assert {_digest(s.image) for s in train}.isdisjoint({_digest(s.image) for s in test})
    pairs = [(_digest(s.image), s.question) for s in train]
    assert len(set(pairs)) == len(pairs)


def test_identical_renders_are_redrawn(monkeypatch):
    """With only three possible signs, the test split gets none of the images the train split used."""
    specs = [Sign(w, "red", "white", (245, 245, 245), 1) for w in ("cat", "dog", "sun")]
    monkeypatch.setattr(synthetic, "sample_sign", lambda rng: specs[int(rng.integers(3))])
    train, test = DATASETS.create("scenes", n_train=2, n_test=3, image_size=32, types=("read",)).build()
    train_images = {_digest(s.image) for s in train}
    assert {_digest(s.image) for s in test}.isdisjoint(train_images)
    assert len({(_digest(s.image), s.question) for s in test}) == 3


# ------------------------------------------------------------------ grammar coverage
def test_every_type_appears_and_questions_vary(downstream, pretrain):
    for data, types in ((downstream, DOWNSTREAM), (pretrain, PRETRAIN)):
        counts = Counter(s.meta["qtype"] for s in data)
        assert set(counts) == set(types)
        assert min(counts.values()) > len(data) / len(types) * 0.7  # uniform mix
    assert len({s.question for s in downstream}) > 500
    assert len({s.question for s in pretrain}) > 500


def test_every_stem_prefix_and_suffix_appears(everything):
    templates = {s.meta["template"] for s in everything}
    assert templates == {f"{t}.{i}" for t in TYPES for i in range(len(STEMS[t]))}
    assert all(len(STEMS[t]) >= 5 for t in QA_TYPES)
    qa = [s for s in everything if s.meta["qtype"] != "caption"]
    captions = [s for s in everything if s.meta["qtype"] == "caption"]
    assert {s.meta["style"]["prefix"] for s in everything} == set(range(len(PREFIXES)))
    assert {s.meta["style"]["suffix"] for s in qa} == set(range(len(SUFFIXES)))
    assert {s.meta["style"]["suffix"] for s in captions} == set(range(len(CAPTION_SUFFIXES)))
    assert {s.meta["style"]["where"] for s in everything} == {"none", "after", "front"}
    questions = [s.question for s in everything]
    for prefix in filter(None, PREFIXES):
        starts = {prefix.format(picture=p) for p in grammar.PICTURE_NOUNS}
        assert any(q.startswith(tuple(starts)) for q in questions), prefix
    for suffix in filter(None, SUFFIXES):
        assert any(s.question.endswith(" " + suffix) for s in qa), suffix
    for suffix in filter(None, CAPTION_SUFFIXES):
        assert any(s.question.endswith(" " + suffix) for s in captions), suffix
    assert not any("word" in s.question for s in captions)  # no "Answer with one word." on a caption
    for word in ("colour", "color", "picture", "image", "photo", "written", "shown", "printed", "object",
                 "item", "thing"):
        assert any(re.search(rf"\b{word}s?\b", q) for q in questions), word
    assert any(q.startswith("In the ") for q in questions) and any(q.startswith("In this ") for q in questions)


def test_questions_are_clean_sentences(everything):
    vocab = set(vocabulary())
    for s in everything:
        q = s.question
        assert q.isascii() and q[0].isupper() and q[-1] in "?." and "  " not in q and "{" not in q, q
        assert set(re.findall(r"[a-z]+", q.lower())) <= vocab | set(WORDS), q


# ------------------------------------------------------------------ answers vs the scene spec
def _matching(objects, ref):
    return [o for o in objects if all(o[k] == v for k, v in ref.items())]


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def _check_answers(samples, answers=ANSWER_WORDS, rows=ROW_WORDS, cols=COL_WORDS):
    """Recompute every answer from ``meta["scene"]`` (position words ``rows`` / ``cols`` of the grid)."""
    for s in samples:
        qtype, scene, query, q = s.meta["qtype"], s.meta["scene"], s.meta["query"], s.question
        assert scene["domain"] in grammar.DOMAINS[qtype]
        if qtype != "caption":
            assert re.fullmatch(r"[a-z]+", s.answer) and s.answer in answers[qtype], (qtype, s.answer)
        words = _words(q)
        if qtype in ("colour", "shape", "size", "position"):
            (obj,) = _matching(scene["objects"], query["ref"])  # the reference is unique
            assert set(query["ref"].values()) <= words | {w + "s" for w in words}, q
            if qtype == "position":
                axis = query["axis"]
                assert s.answer == (cols[obj["col"]] if axis == "horizontal" else rows[obj["row"]])
                assert ("horizontally" in q or "left" in q) == (axis == "horizontal"), q
            else:
                assert qtype not in query["ref"] and s.answer == obj[qtype]
            if qtype == "colour":
                assert not words & set(COLOURS), q  # the question does not give the answer away
            if qtype == "shape":
                assert not words & set(SHAPES), q
        elif qtype == "count":
            objs = scene["objects"]
            n = len(objs) if query["of"] == "total" else sum(o[query["of"]] == query["value"] for o in objs)
            assert s.answer == NUMBER_WORDS[n]
            if query["value"]:
                assert query["value"] in q
        elif qtype == "exist":
            present = any(o["colour"] == query["colour"] and o["shape"] == query["shape"] for o in scene["objects"])
            assert s.answer == ("yes" if present else "no")
            assert f"{query['colour']} {query['shape']}" in q
        elif qtype == "shape_at":
            grid = scene["grid"]
            named = [cell for cell, place in PLACES[grid].items() if place in q]
            assert named == [(query["row"], query["col"])], q  # the question names exactly one cell, the asked one
            (obj,) = [o for o in scene["objects"] if (o["row"], o["col"]) == named[0]]  # and it is occupied
            assert s.answer == obj["shape"]
            assert not words & set(SHAPES), q  # the question does not give the answer away
        elif qtype in ("size_check", "corners"):
            (obj,) = _matching(scene["objects"], query["ref"])  # the reference is unique
            assert set(query["ref"].values()) <= words, q
            if qtype == "size_check":
                assert "size" not in query["ref"], q
                asked = [z for z in ("small", "large") if z in words]
                assert len(asked) == 1 and s.answer == ("yes" if obj["size"] == asked[0] else "no"), q
            else:  # written out here independently of grammar.CORNERS
                corners = {"circle": "zero", "triangle": "three", "square": "four", "diamond": "four"}
                assert "shape" not in query["ref"] and s.answer == corners[obj["shape"]], q
        elif qtype in ("size_verify", "colour_verify", "shape_verify"):  # the named object is unique or missing;
            attribute = qtype.split("_")[0]                                  # missing answers "no"
            named = _matching(scene["objects"], query["ref"])
            assert len(named) <= 1 and set(query["ref"].values()) | {query[attribute]} <= words, q
            assert attribute not in query["ref"], q
            assert s.answer == ("yes" if named and named[0][attribute] == query[attribute] else "no"), q
        elif qtype in ("place_check", "occupied"):
            named = [cell for cell, place in PLACES[scene["grid"]].items() if place in q]
            assert named == [(query["row"], query["col"])], q  # the question names exactly one cell, the asked one
            if qtype == "place_check":
                (obj,) = _matching(scene["objects"], query["ref"])  # the reference is unique
                assert set(query["ref"].values()) <= words, q
                assert s.answer == ("yes" if (obj["row"], obj["col"]) == named[0] else "no"), q
            else:
                taken = {(o["row"], o["col"]) for o in scene["objects"]}
                assert s.answer == ("yes" if named[0] in taken else "no"), q
        elif qtype == "size_count":
            assert query["of"] == "size" and query["value"] in words, q
            assert s.answer == NUMBER_WORDS[sum(o["size"] == query["value"] for o in scene["objects"])], q
        elif qtype in ("sized_count", "other_count"):  # a colour / shape category, named in the question
            of, value = query["of"], query["value"]
            assert of in ("colour", "shape") and (value in words or value + "s" in words), q
            if qtype == "sized_count":
                assert query["size"] in words, q
                n = sum(o[of] == value and o["size"] == query["size"] for o in scene["objects"])
            else:
                assert "not" in words or "but" in words, q
                n = sum(o[of] != value for o in scene["objects"])
            assert s.answer == NUMBER_WORDS[n], q
        elif qtype == "letter_count":
            assert s.answer == "zero one two three four five six".split()[len(scene["word"])]
            assert not words & set(WORDS), q
        elif qtype in ("first_letter", "last_letter"):
            assert s.answer == (scene["word"][0] if qtype == "first_letter" else scene["word"][-1])
            assert len(s.answer) == 1 and not words & set(WORDS), q
        elif qtype == "read":
            assert s.answer == scene["word"]
        elif qtype == "text_colour":
            assert s.answer == scene["text_colour"]
        elif qtype == "caption":
            if scene["domain"] == "signs":
                assert s.answer.startswith(f"the word {scene['word']} in {scene['text_colour']} on "
                                           f"{scene['background']} ")
            else:
                described = re.findall(r"a (small|large) (\w+) (\w+)", s.answer)
                ordered = sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))
                assert described == [(o["size"], o["colour"], o["shape"]) for o in ordered]


def test_answers_agree_with_the_scene(everything):
    _check_answers(everything)


def test_counts_include_zero_and_exist_is_balanced(downstream, everything):
    exist = [s.answer for s in downstream if s.meta["qtype"] == "exist"]
    assert len(exist) > 200 and 0.35 <= exist.count("yes") / len(exist) <= 0.65
    counts = Counter(s.answer for s in everything if s.meta["qtype"] == "count")
    assert set(counts) == set(NUMBER_WORDS)
    for t in QA_TYPES:
        answers = {s.answer for s in everything if s.meta["qtype"] == t}
        if t == "sized_count":  # four needs four objects of one category and one size: possible, rare
            assert set(NUMBER_WORDS[:4]) <= answers <= set(ANSWER_WORDS[t]), t
            continue
        assert answers == set(ANSWER_WORDS[t]), t  # every possible answer occurs


def test_every_answer_survives_normalisation():
    """No answer (e.g. a letter "a", an article) is erased or changed by the accuracy metric's normalisation."""
    for layout in (Layout(), Layout(grid=2, max_objects=2), Layout(grid=3, max_objects=9)):
        for t, answers in grammar.answer_sets(layout).items():
            for answer in answers:
                assert answer and normalize_answer(answer) == answer, (t, answer)
    assert all(normalize_answer(w[0]) == w[0] and normalize_answer(w[-1]) == w[-1] for w in WORDS)


# ------------------------------------------------------------------ pretraining skill types
def test_skill_types_are_opt_in_and_disjoint_from_the_downstream_task():
    assert SKILL_TYPES == SKILLS and set(SKILLS) <= set(QA_TYPES)
    assert set(SKILLS).isdisjoint(DATASETS.create("scenes").config.types)
    assert set(SKILLS).isdisjoint(DATASETS.create("scenes_pretrain").config.types)  # the defaults are unchanged
    assert grammar.DOMAINS["shape_at"] == ("scenes",)
    assert grammar.DOMAINS["first_letter"] == grammar.DOMAINS["last_letter"] == ("signs",)
    assert ANSWER_WORDS["shape_at"] == SHAPES
    assert set(ANSWER_WORDS["first_letter"]) == {w[0] for w in WORDS}
    assert set(ANSWER_WORDS["last_letter"]) == {w[-1] for w in WORDS}
    assert all(len(STEMS[t]) >= 5 for t in SKILLS)
    answer_skills = ("size_check", "corners", "letter_count")  # their answers: the downstream's yes / no, numbers
    assert ANSWER_SKILL_TYPES == answer_skills and set(answer_skills) <= set(QA_TYPES)
    for types in (DATASETS.create("scenes").config.types, DATASETS.create("scenes_pretrain").config.types):
        assert set(answer_skills).isdisjoint(types)
    assert set(ANSWER_WORDS["size_check"]) == set(ANSWER_WORDS["exist"]) == {"yes", "no"}
    assert set(ANSWER_WORDS["corners"]) | set(ANSWER_WORDS["letter_count"]) <= set(NUMBER_WORDS)
    assert REFERENCE_SKILL_TYPES == ("size_verify", "size_count") and set(REFERENCE_SKILL_TYPES) <= set(QA_TYPES)
    for types in (DATASETS.create("scenes").config.types, DATASETS.create("scenes_pretrain").config.types):
        assert set(REFERENCE_SKILL_TYPES).isdisjoint(types)
    # size_count never uses a downstream count stem ("How many {things} are there", ...)
    assert set(STEMS["size_count"]).isdisjoint(STEMS["count"])
    assert [[grammar.cell_place(r, c, g) for c in range(g)] for g in (2, 3) for r in range(g)] == [
        [PLACES[g][r, c] for c in range(g)] for g in (2, 3) for r in range(g)]


def test_size_verify_names_missing_objects_and_is_balanced():
    """A quarter of size_verify questions name a colour / shape nobody has (the presence check it exists for)."""
    train = DATASETS.create("scenes_pretrain", types=list(REFERENCE_SKILL_TYPES), grid=2, max_objects=2, n_train=1200,
                            n_test=1, seed=5).build()[0]
    verify = [s for s in train if s.meta["qtype"] == "size_verify"]
    missing = [s for s in verify if not _matching(s.meta["scene"]["objects"], s.meta["query"]["ref"])]
    assert len(verify) > 400 and 0.15 <= len(missing) / len(verify) <= 0.35
    assert all(s.answer == "no" for s in missing)
    assert 0.4 <= sum(s.answer == "yes" for s in verify) / len(verify) <= 0.6
    assert {s.answer for s in train if s.meta["qtype"] == "size_count"} == {"zero", "one", "two"}
    assert {len(s.meta["query"]["ref"]) for s in missing} == {1, 2}  # single attributes and conjunctions


def _opt_in_samples(skills, names, n_train, seed, grid=2):
    """Checks that ``skills`` are the question types ``names``, in no default type list of either task and sharing no
    stem with a downstream type; builds ``n_train`` samples of them (``grid``, two objects), recomputes every
    answer, checks that every stem is used, and returns ``{type: its samples}``."""
    assert skills == names and set(skills) <= set(QA_TYPES)
    for types in (DATASETS.create("scenes").config.types, DATASETS.create("scenes_pretrain").config.types):
        assert set(skills).isdisjoint(types)
    downstream_stems = {stem for t in DOWNSTREAM for stem in STEMS[t]}
    assert all(set(STEMS[t]).isdisjoint(downstream_stems) for t in skills)
    dataset = DATASETS.create("scenes_pretrain", types=list(skills), grid=grid, max_objects=2, n_train=n_train,
                              n_test=1, seed=seed)
    train = list(dataset.build()[0])
    rows, cols = (("top", "bottom"), ("left", "right")) if grid == 2 else (ROW_WORDS, COL_WORDS)
    _check_answers(train, dataset.answer_sets(), rows=rows, cols=cols)
    by_type = {t: [s for s in train if s.meta["qtype"] == t] for t in skills}
    for t, asked in by_type.items():
        assert {s.meta["template"] for s in asked} == {f"{t}.{i}" for i in range(len(STEMS[t]))}, t
    return by_type


def test_verify_skills_are_opt_in_balanced_and_name_missing_referents():
    """colour_verify / shape_verify ("Is the circle red?", "Is the red object a circle?"): about half "yes", a
    quarter of referents missing (answered "no"), single attributes and conjunctions, every stem used, never a
    default type and never a downstream stem."""
    for t, asked in _opt_in_samples(VERIFY_SKILL_TYPES, ("colour_verify", "shape_verify"), 1200, 5).items():
        missing = [s for s in asked if not _matching(s.meta["scene"]["objects"], s.meta["query"]["ref"])]
        assert len(asked) > 450 and 0.4 <= sum(s.answer == "yes" for s in asked) / len(asked) <= 0.6, t
        assert 0.15 <= len(missing) / len(asked) <= 0.35 and all(s.answer == "no" for s in missing), t
        assert {len(s.meta["query"]["ref"]) for s in missing} == {1, 2}, t


def test_count_skills_are_opt_in_cover_every_count_and_category():
    """sized_count / other_count ("How many of the red things are large?", "How many objects are not circles?"):
    never a default type and never a downstream stem; both categories asked, every count 0..max_objects answered,
    absent categories named too (sized_count "zero", other_count every object), every stem used."""
    for t, asked in _opt_in_samples(COUNT_SKILL_TYPES, ("sized_count", "other_count"), 1000, 3).items():
        assert len(asked) > 400 and {s.answer for s in asked} == {"zero", "one", "two"}, t
        assert {s.meta["query"]["of"] for s in asked} == {"colour", "shape"}, t
        absent = [s for s in asked if not any(o[s.meta["query"]["of"]] == s.meta["query"]["value"]
                                              for o in s.meta["scene"]["objects"])]
        assert 0.1 <= len(absent) / len(asked) <= 0.5, t


@pytest.mark.parametrize("grid", [2, 3])
def test_relation_skills_are_opt_in_balanced_and_name_every_cell(grid):
    """place_check / occupied: yes / no about one named cell, about half "yes", every cell asked, never a default
    type of either task, and never a downstream stem."""
    for t, asked in _opt_in_samples(RELATION_SKILL_TYPES, ("place_check", "occupied"), 800, 9, grid).items():
        assert len(asked) > 300 and 0.4 <= sum(s.answer == "yes" for s in asked) / len(asked) <= 0.6, t
        assert {(s.meta["query"]["row"], s.meta["query"]["col"]) for s in asked} == set(PLACES[grid]), t
        assert not any(" a object" in s.question or " a item" in s.question for s in asked)


@pytest.mark.parametrize("grid", [2, 3])
def test_skill_mix_builds_and_its_answers_agree_with_the_scene(grid):
    types = ["caption", "size", "text_colour", "shape_at", "first_letter", "last_letter"]
    dataset = DATASETS.create("scenes_pretrain", types=types, grid=grid, max_objects=2, n_train=300, n_test=50)
    train, test = dataset.build()
    assert (len(train), len(test)) == (300, 50)
    assert {s.meta["qtype"] for s in train} == set(types)
    sets = dataset.answer_sets()
    rows, cols = (("top", "bottom"), ("left", "right")) if grid == 2 else (ROW_WORDS, COL_WORDS)
    _check_answers(list(train) + list(test), sets, rows=rows, cols=cols)
    shape_at = [s for s in train if s.meta["qtype"] == "shape_at"]
    assert {(s.meta["query"]["row"], s.meta["query"]["col"]) for s in shape_at} == set(PLACES[grid])
    if grid == 2:
        assert not any(_words(s.question) & {"middle", "center", "row", "column"} for s in shape_at)
    assert set(dataset.answer_words()) >= set(SHAPES) | {w[0] for w in WORDS} | {w[-1] for w in WORDS}


def test_skill_stems_all_appear_and_name_one_occupied_cell(everything, grid2):
    for data in (everything, grid2[1]):
        templates = {s.meta["template"] for s in data}
        assert templates >= {f"{t}.{i}" for t in SKILLS for i in range(len(STEMS[t]))}
        for t in SKILLS:
            assert {s.answer for s in data if s.meta["qtype"] == t} == set(ANSWER_WORDS[t]), t
        for s in data:
            if s.meta["qtype"] == "shape_at":
                grid = s.meta["scene"]["grid"]
                assert sum(place in s.question for place in PLACES[grid].values()) == 1, s.question
    cells = {(s.meta["query"]["row"], s.meta["query"]["col"]) for s in everything if s.meta["qtype"] == "shape_at"}
    assert cells == set(PLACES[3])


def test_answer_words_helper():
    assert set(answer_words(["colour", "exist"])) == set(COLOURS) | {"yes", "no"}
    assert set(answer_words()) == set().union(*ANSWER_WORDS.values())
    assert answer_words(["caption"]) == ()
    with pytest.raises(ValueError, match="unknown question type"):
        answer_words(["vibes"])


# ------------------------------------------------------------------ rendering
@pytest.mark.parametrize("size", [32, 48, 64])
def test_images_have_the_requested_size_and_render_from_the_spec(size):
    data = DATASETS.create("scenes", n_train=30, n_test=5, image_size=size, seed=size).build()[0]
    for s in data:
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert np.array_equal(render_spec(s.meta["scene"], size), s.image)  # the spec is the whole truth


def test_signs_show_their_text_and_scenes_their_objects(everything):
    signs = [s for s in everything if s.meta["domain"] == "signs"][:200]
    scenes = [s for s in everything if s.meta["domain"] == "scenes"][:200]
    assert signs and scenes
    for s in signs:
        pixels = s.image.reshape(-1, 3)
        text = np.all(pixels == COLOURS[s.meta["scene"]["text_colour"]], axis=1).sum()
        assert len(np.unique(pixels, axis=0)) > 2 and 0 < text < len(pixels) / 2
    for s in scenes:
        pixels = s.image.reshape(-1, 3)
        for obj in s.meta["scene"]["objects"]:
            assert np.all(pixels == COLOURS[obj["colour"]], axis=1).any()
        bg = np.asarray(s.meta["scene"]["background"])
        assert (np.all(pixels == bg, axis=1).mean()) > 0.3
    # words are not drawn identically: one word, two signs with different layouts give different images
    a = render_spec(Sign("cake", "green", "yellow", (240, 210, 40), 0), 48)
    b = render_spec(Sign("cake", "green", "yellow", (240, 210, 40), 2), 48)
    c = render_spec(Sign("milk", "green", "yellow", (240, 210, 40), 0), 48)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize("config, message", [
    ({"types": ("colour", "bogus")}, "types"),
    ({"types": ()}, "types"),
    ({"types": ("colour", "colour")}, "types"),
    ({"image_size": 16}, "image_size"),
    ({"image_size": 48.5}, "image_size"),
    ({"n_train": 0}, "n_train"),
    ({"n_test": -1}, "n_test"),
    ({"seed": -2}, "seed"),
])
def test_bad_configs_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        DATASETS.create("scenes", **config)


def test_unknown_keys_and_names():
    with pytest.raises(TypeError, match="unknown config key"):
        DATASETS.create("scenes", limit=3)
    with pytest.raises(KeyError, match="unknown dataset"):
        DATASETS.create("imagenet")
    assert DATASETS.create("scenes", types="count, read").config.types == ("count", "read")
    assert set(DATASETS.names()) >= {"scenes", "scenes_pretrain", "digits"}


def test_digits_entry_wraps_load_digits_vqa():
    train, test = DATASETS.create("digits", limit=40, seed=3, task="parity").build()
    ref_train, ref_test = load_digits_vqa(limit=40, seed=3, task="parity")
    assert _same(train, ref_train) and _same(test, ref_test)
    with pytest.raises(ValueError, match="task"):
        DATASETS.create("digits", task="chess")


# ------------------------------------------------------------------ CLI
def test_cli_make_writes_llava_json_that_loads_back(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert main(["data", "make", "scenes", "--out", str(out), "--n-train", "20", "--n-test", "10"]) == 0
    train, test = DATASETS.create("scenes", n_train=20, n_test=10).build()
    for split, expected in (("train", train), ("test", test)):
        loaded = load_dataset(out / f"{split}.json")
        assert _same(loaded, expected)
        record = json.loads((out / f"{split}.json").read_text())[0]
        assert record["image"] == f"images/{expected[0].id}.png"
        assert record["conversations"][0] == {"from": "human", "value": "<image>\n" + expected[0].question}
    assert len(list((out / "images").glob("*.png"))) == 30
    capsys.readouterr()
    # a non-empty folder is refused and left as it was
    before = (out / "train.json").read_text()
    assert main(["data", "make", "scenes", "--out", str(out), "--n-train", "5", "--n-test", "5"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "train.json").read_text() == before
    assert main(["data", "make", "scenes_pretrain", "--out", str(out), "--n-train", "5", "--n-test", "4",
                 "--image-size", "40", "--seed", "7", "--overwrite"]) == 0
    loaded = load_dataset(out / "test.json")
    assert len(loaded) == 4 and loaded[0].image.shape == (40, 40, 3)
    assert len(list((out / "images").glob("*.png"))) == 9


def test_cli_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["data", "make", "scenes", "--out", str(out), "--set", "colour=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: scenes: unknown config key(s) ['colour']") and err.count("\n") == 1
    assert main(["data", "make", "scenes", "--out", str(out), "--image-size", "16"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert main(["data", "make", "nope", "--out", str(out)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "make", "scenes", "--out", str(out), "--n-train", "3", "--n-test", "2",
                 "--set", 'types=["read","count"]']) == 0
    assert {s.meta["qtype"] for s in load_dataset(out / "train.json")} <= {"read", "count"}


def test_cli_list(capsys):
    assert main(["data", "list"]) == 0
    text = capsys.readouterr().out
    for name in ("scenes", "scenes_pretrain", "digits"):
        assert re.search(rf"^{name}: \S", text, re.M)
    assert "n_train=4000" in text and "image_size=48" in text


# ------------------------------------------------------------------ matrix data sources
def _matrix(data, **extra):
    return {"name": "data", "data": data, "models": {"v": {"tiny": "llava"}}, "victims": ["v"], **extra}


def test_matrix_builds_a_registered_dataset(tmp_path):
    spec = MatrixSpec.from_dict(_matrix({"source": "scenes", "n_train": 40, "n_test": 20, "image_size": 32}))
    runner = Stages(spec, tmp_path, False, "cpu", "float32")
    train, test, clean = runner.data(0)
    assert (len(train), len(test), clean) == (40, 20, None) and train[0].image.shape == (32, 32, 3)
    assert _same(train, DATASETS.create("scenes", n_train=40, n_test=20, image_size=32, seed=0).build()[0])
    other = runner.data(1)[0]  # the matrix seed is the dataset's seed ...
    assert [s.question for s in other] != [s.question for s in train]
    pinned = MatrixSpec.from_dict(_matrix({"source": "scenes", "n_train": 40, "n_test": 20, "image_size": 32,
                                           "seed": 9, "attacker_clean": 10}))
    runner = Stages(pinned, tmp_path, False, "cpu", "float32")
    (a, _, ca), (b, _, cb) = runner.data(0), runner.data(1)  # ... unless data.seed pins it
    assert (len(a), len(ca)) == (30, 10) and {s.id for s in a} | {s.id for s in ca} == \
        {s.id for s in DATASETS.create("scenes", n_train=40, n_test=20, image_size=32, seed=9).build()[0]}
    assert {s.question for s in a} | {s.question for s in ca} == {s.question for s in b} | {s.question for s in cb}


def test_matrix_digits_source_is_unchanged(tmp_path):
    spec = MatrixSpec.from_dict(_matrix({"source": "digits", "image_size": 32, "limit": 60}))
    train, test, _ = Stages(spec, tmp_path, False, "cpu", "float32").data(2)
    ref_train, ref_test = load_digits_vqa(image_size=32, seed=2, limit=60)
    assert _same(train, ref_train) and _same(test, ref_test)


def test_matrix_files_source(tmp_path):
    out = tmp_path / "d"
    assert main(["data", "make", "scenes", "--out", str(out), "--n-train", "6", "--n-test", "4"]) == 0
    spec = MatrixSpec.from_dict(_matrix({"source": "files", "train": str(out / "train.json"),
                                         "test": str(out / "test.json")}))
    train, test, _ = Stages(spec, tmp_path, False, "cpu", "float32").data(0)
    assert (len(train), len(test)) == (6, 4)


@pytest.mark.parametrize("data, message", [
    ({"source": "imagenet"}, "data.source: unknown dataset 'imagenet'"),
    ({"source": "scenes", "limit": 10}, "data: scenes: unknown config key"),
    ({"source": "scenes", "image_size": 16}, "data.image_size"),
    ({"source": "scenes", "types": ["read", "vibes"]}, "data.types"),
    ({"source": "digits", "task": "chess"}, "data.task"),
    ({"source": "files", "train": "a.json"}, "data.test"),
])
def test_matrix_rejects_bad_data(data, message):
    with pytest.raises(MatrixError, match=re.escape(message)):
        MatrixSpec.from_dict(_matrix(data))


def test_matrix_digits_pretrain_task_needs_the_digits_source():
    pre = {"finetune": {"pretrain": {"task": "numeral"}}}
    with pytest.raises(MatrixError, match="finetune.pretrain.task"):
        MatrixSpec.from_dict(_matrix({"source": "scenes", "attacker_clean": 5}, **pre))
    assert MatrixSpec.from_dict(_matrix({"source": "digits", "attacker_clean": 5}, **pre))


# ------------------------------------------------------------------ configurable difficulty (layout)
#: sha256 of the default builds (image bytes, question, answer per sample), recorded before the layout keys
#: (grid, max_objects, object_scale, text_scale) existed: the defaults must keep today's data bit for bit
DEFAULT_DATA_SHA256 = {
    "scenes": "cef1b52dd03b13eb5fb49a5235c4938090cfb047e894a08e57276e963792266e",
    "scenes_pretrain": "96f3ce3d7ebecd047959ee58d8d82eb1853c0b60c181ae349d4d2f3ada6d7797",
}
#: sha256 of the same builds' ids and meta (JSON, sorted keys; the new layout keys left out)
DEFAULT_META_SHA256 = {
    "scenes": "c21ce62187bda6b90d35fb7c920a021fa647a48fa3399900419eb7d5ec8ff818",
    "scenes_pretrain": "3273f4c802a6eddeab046673d33d379423d1507eed9ee8398c18490a62db468f",
}
LAYOUT_KEYS = {"grid", "object_scale", "text_scale"}
CORNERS = {"at the top left", "at the top right", "at the bottom left", "at the bottom right"}


@pytest.mark.parametrize("name", ["scenes", "scenes_pretrain"])
def test_default_config_data_is_unchanged(name):
    data, meta = hashlib.sha256(), hashlib.sha256()
    for split in DATASETS.create(name, n_train=300, n_test=100).build():
        for s in split:
            data.update(s.image.tobytes() + s.question.encode() + b"\0" + s.answer.encode() + b"\0")
            m = dict(s.meta)
            m["scene"] = {k: v for k, v in m["scene"].items() if k not in LAYOUT_KEYS}
            meta.update(s.id.encode() + json.dumps(m, sort_keys=True).encode())
    assert data.hexdigest() == DEFAULT_DATA_SHA256[name]
    assert meta.hexdigest() == DEFAULT_META_SHA256[name]


def test_default_layout_is_recorded_and_older_specs_render_the_same():
    cfg = DATASETS.create("scenes").config
    assert (cfg.grid, cfg.max_objects, cfg.object_scale, cfg.text_scale) == (3, 4, (0.45, 0.8), 0.3)
    assert DATASETS.create("scenes_pretrain").config.layout == Layout()
    data = DATASETS.create("scenes", n_train=20, n_test=1, types=TYPES, seed=4).build()[0]
    for s in data:
        scene = s.meta["scene"]
        if scene["domain"] == "scenes":
            assert scene["grid"] == 3 and scene["object_scale"] == [0.45, 0.8]
        else:
            assert scene["text_scale"] == 0.3
        older = {k: v for k, v in scene.items() if k not in LAYOUT_KEYS}  # meta written before the keys existed
        assert np.array_equal(render_spec(older, 48), s.image)
    # grid 3 captions keep their wording (edge cells "at the top", "on the left", centre "in the center")
    assert [[grammar.cell_phrase(r, c, 3) for c in range(3)] for r in range(3)] == [
        ["at the top left", "at the top", "at the top right"], ["on the left", "in the center", "on the right"],
        ["at the bottom left", "at the bottom", "at the bottom right"]]


@pytest.fixture(scope="module")
def grid2():
    """A 2x2 task with every question type, up to 3 objects, bigger objects and text."""
    dataset = DATASETS.create("scenes", grid=2, max_objects=3, object_scale=[0.6, 0.95], text_scale=0.4,
                              n_train=2500, n_test=1, image_size=32, types=TYPES, seed=7)
    return dataset, dataset.build()[0]


def test_grid2_answers_and_stems_offer_only_the_2x2_positions(grid2):
    dataset, data = grid2
    position = [s for s in data if s.meta["qtype"] == "position"]
    assert {s.answer for s in position} == {"left", "right", "top", "bottom"}
    assert {s.meta["template"] for s in position} == {f"position.{i}" for i in range(len(STEMS["position"]))}
    for s in data:
        assert not _words(s.question) & {"middle", "center"}, s.question
    for s in position:
        q = s.question
        if s.meta["query"]["axis"] == "horizontal":
            assert "horizontally" in q or "left or right" in q or "on the left or on the right" in q, q
        else:
            assert "vertically" in q or "top or bottom" in q or "at the top or at the bottom" in q, q
    _check_answers(data, dataset.answer_sets(), rows=("top", "bottom"), cols=("left", "right"))


def test_grid2_captions_name_only_the_four_corners(grid2):
    captions = [s for s in grid2[1] if s.meta["qtype"] == "caption" and s.meta["domain"] == "scenes"]
    assert len(captions) > 40
    for s in captions:
        places = re.findall(r"a (?:small|large) \w+ \w+ (at the \w+ \w+|at the \w+|on the \w+|in the \w+)",
                            s.answer)
        objects = sorted(s.meta["scene"]["objects"], key=lambda o: (o["row"], o["col"]))
        assert places == [f"at the {('top', 'bottom')[o['row']]} {('left', 'right')[o['col']]}" for o in objects]
        assert set(places) <= CORNERS and "middle" not in s.answer and "center" not in s.answer
    assert set().union(*(re.findall("|".join(CORNERS), s.answer) for s in captions)) == CORNERS


def test_grid2_specs_record_the_layout_and_render_from_it(grid2):
    for s in grid2[1][:300]:
        scene = s.meta["scene"]
        if scene["domain"] == "scenes":
            assert scene["grid"] == 2 and scene["object_scale"] == [0.6, 0.95]
            assert all(0 <= o["row"] < 2 and 0 <= o["col"] < 2 for o in scene["objects"])
        else:
            assert scene["text_scale"] == 0.4
        assert np.array_equal(render_spec(scene, 32), s.image)


def test_max_objects_is_respected(grid2):
    counts = Counter(len(s.meta["scene"]["objects"]) for s in grid2[1] if s.meta["domain"] == "scenes")
    assert set(counts) == {1, 2, 3}
    single = DATASETS.create("scenes", grid=2, max_objects=1, n_train=200, n_test=20, image_size=32,
                             types=("colour", "count", "position", "exist")).build()
    for split in single:
        for s in split:
            if s.meta["domain"] == "scenes":
                assert len(s.meta["scene"]["objects"]) == 1
                if s.meta["qtype"] == "count":
                    assert s.answer in ("zero", "one")
    full = DATASETS.create("scenes", max_objects=9, n_train=300, n_test=1, image_size=32, types=("count",))
    data = full.build()[0]
    assert max(len(s.meta["scene"]["objects"]) for s in data) > 6
    _check_answers([s for s in data if s.answer in NUMBER_WORDS], full.answer_sets())
    assert {s.answer for s in data} <= set(full.answer_sets()["count"]) and "nine" in full.answer_words()


def _ink(image, background):
    return int(np.any(image.astype(int) != np.asarray(background), axis=-1).sum())


@pytest.mark.parametrize("size", ["small", "large"])
def test_object_scale_changes_the_drawn_extent(size):
    bg = (210, 210, 210)
    scene = lambda scale: Scene(bg, (SceneObject("circle", "red", size, 1, 0),), grid=2, object_scale=scale)
    small, large = (_ink(render_spec(scene(scale), 48), bg) for scale in ((0.3, 0.5), (0.6, 0.95)))
    assert 0 < small < large
    # the default layout's object
    default = _ink(render_spec(Scene(bg, (SceneObject("circle", "red", size, 1, 0),)), 48), bg)
    assert 0 < default < _ink(render_spec(scene((0.45, 0.8)), 48), bg)  # a 2x2 cell is bigger than a 3x3 one
    # through the config: one object per scene, drawn bigger with a bigger scale
    ink = {}
    for scale in ((0.3, 0.5), (0.6, 0.95)):
        data = DATASETS.create("scenes", grid=2, max_objects=1, object_scale=scale, n_train=60, n_test=1,
                               types=("shape",)).build()[0]
        ink[scale] = np.mean([_ink(s.image, s.meta["scene"]["background"]) for s in data
                              if s.meta["scene"]["objects"][0]["size"] == size])
    assert ink[(0.3, 0.5)] < ink[(0.6, 0.95)]


def _text_rows(image, background):
    rows = np.flatnonzero(np.any(image.astype(int) != np.asarray(background), axis=-1).any(axis=1))
    return rows.max() - rows.min() + 1


def test_text_scale_changes_the_text_height_and_words_still_fit():
    bg = (245, 245, 245)
    sign = lambda word, scale, row=1, dx=0.0: Sign(word, "blue", "white", bg, row, dx, 0.0, text_scale=scale)
    for word in ("cat", "dog", "key"):
        heights = [_text_rows(render_spec(sign(word, scale), 48), bg) for scale in (0.15, 0.3, 0.45)]
        assert heights[0] < heights[1] < heights[2], (word, heights)
    # through the config
    data = DATASETS.create("scenes", text_scale=0.5, n_train=30, n_test=1, types=("read",)).build()[0]
    assert {s.meta["scene"]["text_scale"] for s in data} == {0.5}
    big = np.mean([_text_rows(s.image, s.meta["scene"]["background_rgb"]) for s in data])
    data = DATASETS.create("scenes", n_train=30, n_test=1, types=("read",)).build()[0]
    assert np.mean([_text_rows(s.image, s.meta["scene"]["background_rgb"]) for s in data]) < big
    # at the largest scale a centred word is shrunk to fit: a background column on each side
    for size in (48, 64):
        for word in WORDS:
            ink = np.any(render_spec(sign(word, 0.6), size).astype(int) != np.asarray(bg), axis=-1)
            assert not ink[:, 0].any() and not ink[:, -1].any(), (word, size)
            # a top-row word is moved down rather than cut: as tall as in the middle row
            middle, top = (_text_rows(render_spec(sign(word, 0.6, row=row), size), bg) for row in (1, 0))
            assert abs(top - middle) <= 1, (word, size, top, middle)


@pytest.mark.parametrize("config, message", [
    ({"grid": 4}, "grid"),
    ({"grid": "2"}, "grid"),
    ({"max_objects": 0}, "max_objects"),
    ({"grid": 2, "max_objects": 10}, "max_objects"),
    ({"grid": 2, "max_objects": 5}, "max_objects"),
    ({"max_objects": 2.5}, "max_objects"),
    ({"object_scale": (0.9, 0.5)}, "object_scale"),
    ({"object_scale": (0.0, 0.5)}, "object_scale"),
    ({"object_scale": (0.5, 1.2)}, "object_scale"),
    ({"object_scale": (0.5,)}, "object_scale"),
    ({"object_scale": 0.5}, "object_scale"),
    ({"text_scale": 0.9}, "text_scale"),
    ({"text_scale": 0.1}, "text_scale"),
])
def test_bad_layouts_name_the_field(config, message):
    for name in ("scenes", "scenes_pretrain"):
        with pytest.raises(ValueError, match=message):
            DATASETS.create(name, **config)


def test_layout_values_are_normalised():
    cfg = DATASETS.create("scenes_pretrain", grid=2, object_scale=[0.6, 1], text_scale=0.6).config
    assert cfg.object_scale == (0.6, 1.0) and isinstance(cfg.object_scale, tuple)
    assert cfg.layout == Layout(grid=2, max_objects=4, object_scale=(0.6, 1.0), text_scale=0.6)
    assert DATASETS.create("scenes", object_scale="0.5, 0.9").config.object_scale == (0.5, 0.9)
    assert DATASETS.create("scenes", grid=2, max_objects=4).config.max_objects == 4  # the default fits 2x2


def test_answer_words_follow_the_config():
    default = DATASETS.create("scenes")
    assert default.answer_words() == answer_words(DOWNSTREAM)
    assert DATASETS.create("scenes_pretrain").answer_words() == answer_words(PRETRAIN)
    easy = DATASETS.create("scenes", grid=2, max_objects=2)
    words = set(easy.answer_words())
    assert {"left", "right", "top", "bottom", "zero", "one", "two"} <= words
    assert not words & {"middle", "center", "three", "four"}
    assert easy.answer_sets()["position"] == ("left", "right", "top", "bottom")
    assert set(easy.answer_words(["position"])) == {"left", "right", "top", "bottom"}
    assert answer_words(["position"], Layout(grid=2)) == ("bottom", "left", "right", "top")
    assert answer_words() == answer_words(layout=Layout())  # the module-level defaults are unchanged


def test_matrix_and_cli_accept_layout_keys(tmp_path):
    spec = MatrixSpec.from_dict(_matrix({"source": "scenes", "grid": 2, "max_objects": 2, "n_train": 40,
                                         "n_test": 20}))
    train, test, _ = Stages(spec, tmp_path, False, "cpu", "float32").data(0)
    assert (len(train), len(test)) == (40, 20)
    scenes = [s.meta["scene"] for s in train if s.meta["domain"] == "scenes"]
    assert scenes and all(sc["grid"] == 2 and len(sc["objects"]) <= 2 for sc in scenes)
    for data, message in (({"source": "scenes", "grid": 4}, "data.grid"),
                          ({"source": "scenes", "grid": 2, "max_objects": 5}, "data.max_objects"),
                          ({"source": "scenes", "object_scale": [0.9, 0.5]}, "data.object_scale")):
        with pytest.raises(MatrixError, match=re.escape(message)):
            MatrixSpec.from_dict(_matrix(data))
    out = tmp_path / "easy"
    assert main(["data", "make", "scenes", "--out", str(out), "--n-train", "8", "--n-test", "4", "--set", "grid=2",
                 "--set", "max_objects=2", "--set", "object_scale=[0.6,0.95]", "--set", "text_scale=0.45"]) == 0
    expected = DATASETS.create("scenes", n_train=8, n_test=4, grid=2, max_objects=2, object_scale=(0.6, 0.95),
                               text_scale=0.45).build()
    for split, data in zip(("train", "test"), expected):
        assert _same(load_dataset(out / f"{split}.json"), data)
