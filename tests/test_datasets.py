"""Loaders, splits and overlap removal on the shared JSONL copies (skipped if absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate import (
    DATASETS,
    Problem,
    load_dataset,
    load_jsonl,
    question_fingerprint,
    remove_overlap,
    split_problems,
)

DATA_DIR = Path(os.environ.get("UNLOCK_LENS_DATA") or Path(__file__).parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(),
    reason=f"shared data folder not found at {DATA_DIR} (set UNLOCK_LENS_DATA to a copy)",
)

# multiarith_test.jsonl holds 600 records: its last line has no trailing newline, so `wc -l`
# (and the data README) say 599.
EXPECTED = [
    ("gsm8k", "test", 1319),
    ("gsm8k", "train", 7473),
    ("math500", "test", 500),
    ("agieval-math", "test", 1000),
    ("svamp", "test", 1000),
    ("multiarith", "test", 600),
    ("asdiv", "test", 2215),
]


@needs_data
@pytest.mark.parametrize(("name", "split", "count"), EXPECTED)
def test_counts_and_unique_ids(name: str, split: str, count: int) -> None:
    problems = load_dataset(name, split, path=DATA_DIR)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.dataset == name and p.split == split for p in problems)
    assert all(p.question.strip() and p.answer.strip() for p in problems)
    assert problems[42].id == f"{name}-{split}-0042"


def test_registry_names() -> None:
    assert set(DATASETS) == {"gsm8k", "math500", "agieval-math", "svamp", "multiarith", "asdiv"}
    assert set(DATASETS["gsm8k"].files) == {"train", "test"}


@needs_data
def test_field_conversion() -> None:
    gsm = load_dataset("gsm8k", path=DATA_DIR, limit=3)
    assert [p.answer for p in gsm] == ["18", "3", "70000"]
    assert gsm[0].solution is not None and gsm[0].solution.endswith("#### 18")

    svamp = load_dataset("svamp", path=DATA_DIR, limit=1)[0]
    assert svamp.question.startswith("There are 87 oranges")
    assert svamp.question.endswith("How big is each group of bananas?")
    assert svamp.answer == "145" and svamp.metadata["source_id"] == "chal-777"

    asdiv = load_dataset("asdiv", path=DATA_DIR, limit=1)[0]
    assert asdiv.answer == "9" and asdiv.metadata["raw_answer"] == "9 (apples)"

    agi = load_dataset("agieval-math", path=DATA_DIR, limit=1)[0]
    assert agi.answer == "(3,4]" and agi.solution and "f(f(x))" in agi.solution

    math500 = load_dataset("math500", path=DATA_DIR, limit=1)[0]
    assert math500.metadata["unique_id"] == "test/precalculus/807.json"
    assert math500.answer == r"\left( 3, \frac{\pi}{2} \right)"


@needs_data
def test_default_folder_from_env_and_single_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    assert len(load_dataset("MultiArith", limit=5)) == 5  # case/alias tolerant
    assert len(load_dataset("math-500", path=DATA_DIR / "math500_test.jsonl", limit=7)) == 7


@needs_data
def test_agieval_math500_overlap_found_and_removed() -> None:
    agi = load_dataset("agieval-math", path=DATA_DIR)
    m500 = load_dataset("math500", path=DATA_DIR)
    m500_prints = {question_fingerprint(p.question) for p in m500}
    overlap = [p for p in agi if question_fingerprint(p.question) in m500_prints]
    print(f"AGIEval-Math ∩ MATH-500 by question fingerprint: {len(overlap)} (README: 102)")
    assert len(overlap) == 102
    cleaned = remove_overlap(agi, m500)
    assert len(cleaned) == 1000 - 102
    assert not {question_fingerprint(p.question) for p in cleaned} & m500_prints


def test_fingerprint_ignores_whitespace_case_punctuation() -> None:
    a = question_fingerprint("What is  2+2?\n")
    assert a == question_fingerprint("what is 2 + 2")
    assert a != question_fingerprint("What is 2+3?")


def _toy(n: int) -> list[Problem]:
    return [Problem(f"t-{i}", f"Question number {i}?", str(i), "toy", "test") for i in range(n)]


@needs_data
def test_split_disjoint_and_covering() -> None:
    problems = load_dataset("multiarith", path=DATA_DIR)  # has 20 repeated questions
    fractions = {"key": 0.25, "align": 0.25, "dev": 0.1, "eval": 0.4}
    parts = split_problems(problems, fractions, seed=0)
    assert list(parts) == list(fractions)
    ids = [p.id for part in parts.values() for p in part]
    assert sorted(ids) == sorted(p.id for p in problems)  # covering, no id twice
    prints = [{question_fingerprint(p.question) for p in part} for part in parts.values()]
    for i in range(len(prints)):
        for j in range(i + 1, len(prints)):
            assert not prints[i] & prints[j]
    n_groups = len({question_fingerprint(p.question) for p in problems})
    assert abs(len(prints[3]) - 0.4 * n_groups) <= 1
    # seeded and independent of input order
    again = split_problems(list(reversed(problems)), fractions, seed=0)
    assert {k: {p.id for p in v} for k, v in again.items()} == {
        k: {p.id for p in v} for k, v in parts.items()
    }
    other = split_problems(problems, fractions, seed=1)
    assert {p.id for p in other["eval"]} != {p.id for p in parts["eval"]}


def test_split_partial_fractions_and_errors() -> None:
    parts = split_problems(_toy(100), {"a": 0.3, "b": 0.2})
    assert [len(v) for v in parts.values()] == [30, 20]
    with pytest.raises(UnlockLensError, match="sum to"):
        split_problems(_toy(10), {"a": 0.8, "b": 0.8})
    with pytest.raises(UnlockLensError, match="empty selection"):
        split_problems([], {"a": 1.0})
    dup = _toy(3) + [Problem("t-0", "another", "1", "toy", "test")]
    with pytest.raises(UnlockLensError, match="unique"):
        split_problems(dup, {"a": 1.0})


# ---------------------------------------------------------------------------------- errors


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(UnlockLensError, match="Unknown dataset 'gsm8c'") as exc:
        load_dataset("gsm8c")
    assert "Did you mean 'gsm8k'" in str(exc.value)
    assert "math500" in str(exc.value) and "asdiv" in str(exc.value)


def test_unknown_split() -> None:
    with pytest.raises(UnlockLensError, match="no split 'train'"):
        load_dataset("math500", "train", path="/nonexistent")


def test_malformed_json_line(tmp_path: Path) -> None:
    f = tmp_path / "gsm8k_test.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": oops}\n')
    with pytest.raises(UnlockLensError, match=r"line 3: malformed JSON") as exc:
        load_dataset("gsm8k", path=tmp_path)
    assert str(f) in str(exc.value)


def test_missing_field(tmp_path: Path) -> None:
    f = tmp_path / "svamp_test.jsonl"
    f.write_text(json.dumps({"Body": "b", "Question": "q", "Answer": 1.0}) + "\n")
    f.write_text(f.read_text() + json.dumps({"Body": "b", "Answer": 2.0}) + "\n")
    with pytest.raises(UnlockLensError, match="line 2: missing field 'Question'") as exc:
        load_dataset("svamp", path=f)
    assert "fields present: Answer, Body" in str(exc.value)


def test_gsm8k_answer_without_hashes(tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(UnlockLensError, match="line 1: missing field '####"):
        load_dataset("gsm8k", path=f)


def test_empty_selection(tmp_path: Path) -> None:
    f = tmp_path / "multiarith_test.jsonl"
    f.write_text("\n")
    with pytest.raises(UnlockLensError, match="Empty selection"):
        load_dataset("multiarith", path=f)
    f.write_text(json.dumps({"input": "q", "target": 1}) + "\n")
    with pytest.raises(UnlockLensError, match="limit=0"):
        load_dataset("multiarith", path=f, limit=0)
    assert len(load_dataset("multiarith", path=f, limit=5)) == 1


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnlockLensError, match="No data file for asdiv test") as exc:
        load_dataset("asdiv", path=tmp_path)
    assert str(tmp_path / "asdiv_test.jsonl") in str(exc.value)
    assert "UNLOCK_LENS_DATA" in str(exc.value)
    monkeypatch.setenv("UNLOCK_LENS_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnlockLensError, match="looked for gsm8k_test.jsonl in") as exc:
        load_dataset("gsm8k")
    assert "HF_HUB_OFFLINE" in str(exc.value) and "path=" in str(exc.value)


def test_load_jsonl_custom(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    rows = [
        {"uid": "a", "q": "Two plus two?", "meta": {"gold": "4"}},
        {"uid": "b", "q": "Big?", "meta": {"gold": 1234.0}},
        {"uid": "c", "q": "Worked?", "meta": {"gold": "3 + 4 = 7\n#### 7"}},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    probs = load_jsonl(f, question_field="q", answer_field="meta.gold", id_field="uid", name="my")
    assert [p.id for p in probs] == ["my-a", "my-b", "my-c"]
    assert [p.answer for p in probs] == ["4", "1234", "7"]
    assert probs[2].solution is not None and probs[2].solution.startswith("3 + 4")
    with pytest.raises(UnlockLensError, match="line 1: missing field 'question'") as exc:
        load_jsonl(f, question_field="question", answer_field="meta.gold")
    assert "fields present: meta, q, uid" in str(exc.value)
    with pytest.raises(UnlockLensError, match="No data file"):
        load_jsonl(tmp_path / "nope.jsonl", question_field="q", answer_field="a")
