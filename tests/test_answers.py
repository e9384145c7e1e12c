"""Answer extraction and matching: unit cases plus recovery of gold answers from gold solutions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from unlock_lens.evaluate import answers_match, extract_answer, load_dataset, normalize_number
from unlock_lens.evaluate.answers import _latex_equal

DATA_DIR = Path(os.environ.get("UNLOCK_LENS_DATA") or Path(__file__).parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(),
    reason=f"shared data folder not found at {DATA_DIR} (set UNLOCK_LENS_DATA to a copy)",
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{3} then \boxed{x^{2}} done", "x^{2}"),
        (r"\fbox{7}", "7"),
        ("The final answer is $\\frac{3}{4}$.", r"\frac{3}{4}"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("so THE ANSWER IS **42**.", "42"),
        ("the answer is 3.5.", "3.5"),
        ("Work...\n#### 1,234", "1234"),
        ("-5", "-5"),
        ("we get 10 - 5 = -2 apples", "-2"),
        ("It costs $1,234.50 in total.", "1234.50"),
        ("she ate 3/4 of it", "3/4"),
        ("there were .5 left", ".5"),
        ("no number here at all", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", 1234.0),
        ("-5", -5.0),
        ("8.0", 8.0),
        ("3/4", 0.75),
        (r"\frac{3}{4}", 0.75),
        (r"\dfrac12", 0.5),
        ("$18.00", 18.0),
        (r"\$18.00", 18.0),
        ("9 (apples)", 9.0),
        ("10 cm", 10.0),
        (r"30^\circ", 30.0),
        ("x = 5", 5.0),
        ("50%", 50.0),
        ("-(1/3)", -1 / 3),
        (r"371,\!043,\!400", 371043400.0),
        ("2x", None),
        ("(2,3)", None),
        ("2 pi", None),
        ("Yes", None),
    ],
)
def test_normalize_number(text: str, value: float | None) -> None:
    got = normalize_number(text)
    assert got == pytest.approx(value) if value is not None else got is None


@pytest.mark.parametrize(
    ("pred", "gold", "same"),
    [
        ("0.5", "1/2", True),
        ("9 (apples)", "9", True),
        ("9", "9 (apples)", True),
        ("$18.00", "18", True),
        ("8.0", "8", True),
        ("1,234", "1234", True),
        ("1234.00001", "1234", True),  # relative tolerance 1e-4
        ("1235", "1234", False),
        ("50%", "50", True),
        ("50%", "0.5", True),
        ("50", "0.5", False),
        ("-5", "5", False),
        (r"\frac12", "0.5", True),
        (r"\frac{1}{2}", r"\dfrac{1}{2}", True),
        (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}", True),
        (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
        ("(3, 4]", "(3,4]", True),
        ("[3,4]", "(3,4]", False),
        (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)", True),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", True),
        ("x^2", "x^{2}", True),
        ("2x", "2", False),
        ("Yes", "yes", True),
        ("3:30 p.m.", "3:30 p.m.", True),
        ("5", "Purple", False),
        (None, "5", False),
        ("", "5", False),
    ],
)
def test_answers_match(pred: str | None, gold: str, same: bool) -> None:
    assert answers_match(pred, gold) is same


@pytest.mark.parametrize(
    "garbage",
    [
        "}}}{{{\\frac{",
        "\\boxed{",
        "$$$",
        "\\sqrt{\\sqrt{\\sqrt{",
        "1/0",
        "9" * 400,
        "\x00\x01 ∞ ∑ ",
        "\\begin{pmatrix} 1 & 2",
        "((((((((((",
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    extract_answer(garbage)
    normalize_number(garbage)
    assert answers_match(garbage, "5") in (True, False)
    assert answers_match("5", garbage) in (True, False)
    assert answers_match(garbage, r"\frac{1}{2}") in (True, False)


def _report(name: str, problems: list, elapsed: float, fails: list[str]) -> str:
    ok = len(problems) - len(fails)
    lines = [f"{name}: {ok}/{len(problems)} = {ok / len(problems):.2%} in {elapsed:.2f}s"]
    lines += fails[:30]
    report = "\n".join(lines)
    print("\n" + report)
    return report


@needs_data
def test_gsm8k_gold_recovery() -> None:
    problems = load_dataset("gsm8k", path=DATA_DIR, limit=500)
    start, fails = time.perf_counter(), []
    for p in problems:
        got = extract_answer(p.solution)
        if not answers_match(got, p.answer):
            fails.append(f"  {p.id}: extracted {got!r}, gold {p.answer!r}")
    report = _report("GSM8K test[:500]", problems, time.perf_counter() - start, fails)
    assert len(fails) <= 5, report


@needs_data
def test_math500_gold_recovery() -> None:
    problems = load_dataset("math500", path=DATA_DIR)
    start, fails = time.perf_counter(), []
    for p in problems:
        got = extract_answer(p.solution)
        if not answers_match(got, p.answer):
            fails.append(
                f"  {p.id} ({p.metadata['unique_id']}): extracted {got!r}, gold {p.answer!r}"
            )
    report = _report("MATH-500", problems, time.perf_counter() - start, fails)
    assert len(fails) <= 25, report


@needs_data
def test_math500_math_verify_path() -> None:
    """The LaTeX path alone (no string/numeric shortcut) on all 500 boxed answers."""
    problems = load_dataset("math500", path=DATA_DIR)
    start, fails = time.perf_counter(), []
    for p in problems:
        got = extract_answer(p.solution) or ""
        if not _latex_equal(got, p.answer):
            fails.append(f"  {p.id}: math_verify({got!r}, {p.answer!r}) is False")
    report = _report("MATH-500 via math_verify only", problems, time.perf_counter() - start, fails)
    assert len(fails) <= 25, report
