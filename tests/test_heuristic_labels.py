"""The generation heuristics against hand-labelled real-pair outputs
(``tests/fixtures/heuristic_labels.jsonl``; ``analysis/results/heuristics.md``): agreement may not
fall below what was measured when the labels were committed, less a small margin."""

import json
import math
from pathlib import Path

import pytest

from analysis.heuristics import HEURISTICS, agreement, copies_question, load_labels
from unlock_lens.evaluate.datasets import default_data_dir, load_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "heuristic_labels.jsonl"
MARGIN = 0.02
# (accuracy, Cohen's kappa) measured on the fixture (python -m analysis.heuristics)
MEASURED = {
    "shows_working (CoT format)": (0.887, 0.775),
    "shows_working, read as multi-step": (0.713, 0.429),
    ">= 2 arithmetic steps": (0.956, 0.868),
    "sequence words (post hoc)": (0.950, 0.854),
    "degenerate": (0.887, 0.676),
    "degenerate_kind (5 classes)": (0.881, 0.685),
    "degenerate_kind == blank": (1.000, math.nan),  # no blank output in the sample
    "degenerate_kind == cut-by-stop": (1.000, 1.000),
    "degenerate_kind == near-loop": (0.919, 0.114),
    "degenerate_kind == loop": (0.956, 0.718),
}


@pytest.fixture(scope="module")
def rows():
    return load_labels(FIXTURE)


def test_fixture_is_a_varied_hand_labelled_sample(rows):
    assert len(rows) >= 100
    assert {r["direction"] for r in rows} == {"smollm2-135m-instruct_to_gemma-3-270m",
                                              "gemma-3-270m_to_smollm2-135m-instruct"}
    assert all(r["problem_id"].split("-")[0] in ("svamp", "multiarith") for r in rows)
    kinds = {r["labels"]["degenerate_kind"] for r in rows}
    assert "none" in kinds and len(kinds) >= 3


def test_agreement_has_not_dropped(rows):
    table = {r["heuristic"]: r for r in agreement(rows)}
    assert set(table) == set(HEURISTICS) == set(MEASURED)
    for name, (accuracy, kappa) in MEASURED.items():
        assert table[name]["accuracy"] >= accuracy - MARGIN, name
        if not math.isnan(kappa):
            assert table[name]["kappa"] >= kappa - MARGIN, name
        assert sum(table[name]["confusion"].values()) == len(rows)


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data")
def test_fixture_quotes_no_question(rows):
    """The .gitignore rule: evaluation-set text is never committed (ids only)."""
    questions = {p.id: p.question for name in ("svamp", "multiarith") for p in load_dataset(name, "test")}
    text = FIXTURE.read_text("utf-8")
    assert {r["problem_id"] for r in rows} <= set(questions)
    assert not [r["problem_id"] for r in rows if copies_question(r["output"], questions[r["problem_id"]])
                or (r["raw"] and copies_question(r["raw"], questions[r["problem_id"]], n_words=4))]
    assert all(set(json.loads(line)) == {"direction", "condition", "problem_id", "seed", "output", "raw", "labels"}
               for line in text.splitlines())
