"""Measures that a degenerate change cannot game: degenerate outputs, behaviour among the
non-degenerate ones, and transfer fidelity."""

from __future__ import annotations

import pytest

from unlock_lens.diagnostics.fidelity import token_agreement, transfer_fidelity
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.results import arithmetic_steps, behaviour, degenerate, degenerate_kind
from unlock_lens.evaluate.stats import cohen_kappa, confusion_counts
from unlock_lens.random_models import build_tokenizer


@pytest.mark.parametrize(("text", "kind"), [
    ("", "blank"), ("  ", "blank"), ("\n", "cut-by-stop"), ("  \n\n ", "blank"), (" \n\n", "cut-by-stop"),
    ("The answer is 4.\n" * 8, "loop"), ("7" * 100, "loop"), ("Answer:\nAnswer:\nAnswer:", "loop"),
    ("The number of days is 15.\nThe number of days is 16.\nThe number of days is 17.", "near-loop"),
    (" First, let's look at the problem.\n\n1.  \n2.  \n3.  \n4.", "near-loop"),
    ("3 + 5 = 8. The final answer is 8.", None), ("\n3 + 5 = 8", None),
    ("ab" * 20, None),  # 40 characters: too short to call a loop
    ("5 + 3 = 8\n8 + 2 = 10\n10 + 4 = 14", None),  # a calculation chain, not a repeat
    ("\n\n1. Nell has 242 cards.\n2. She gives 136 cards to Jeff.\n3. She has 106 cards left.", None),
    ("The answer is 4.\nThe answer is 4.", None),  # two repeats: below min_run
])
def test_degenerate_kind(text, kind):
    assert degenerate_kind(text) == kind
    assert degenerate(text) is (kind is not None)


@pytest.mark.parametrize(("text", "steps"), [
    ("3 + 5 = 8", 1), ("48/2 = 24 clips, then 48 + 24 = 72.", 2), ("<<48/2=24>> <<48+24=72>>", 2),
    ("She has 8 apples and 2 more. The answer is 10.", 0), ("2023-11-30 = today", 0), ("5 x 3 =", 0),
])
def test_arithmetic_steps(text, steps):
    assert arithmetic_steps(text) == steps


def test_behaviour_separates_cot_from_degenerate_outputs():
    rows = [
        {"output": "3 + 5 = 8. The final answer is 8.", "cot_format": True, "correct": True, "n_tokens": 12},
        {"output": "3 + 5 = 8, and 8 x 2 = 16.\nThe final answer is 16.", "cot_format": True, "correct": True,
         "n_tokens": 20},
        {"output": "\n", "cot_format": False, "correct": False, "n_tokens": 1},
        {"output": "", "cot_format": False, "correct": False, "n_tokens": 1},
        {"output": "The final answer is 9.", "cot_format": False, "correct": False, "n_tokens": 6},
    ]
    b = behaviour(rows)
    assert b == {"n": 5, "degenerate_rate": 0.4, "blank_rate": 0.2, "cut_by_stop_rate": 0.2, "near_loop_rate": 0.0,
                 "loop_rate": 0.0, "cot_rate_non_degenerate": pytest.approx(2 / 3),
                 "multi_step_rate_non_degenerate": pytest.approx(1 / 3), "mean_tokens": 8.0, "accuracy": 0.4}
    with pytest.raises(UnlockLensError, match="no rows"):
        behaviour([])


def test_transfer_fidelity():
    tok = build_tokenizer()
    assert token_agreement([], []) == 1.0 and token_agreement([1, 2], [3, 2, 1]) == pytest.approx(1 / 3)
    ours = ["3 + 5 = 8.", "The final answer is 8.", "x"]
    native = ["3 + 5 = 8.", "The final answer is 9.", "y"]
    f = transfer_fidelity(ours, native, tok)
    assert f["identical_rate"] == pytest.approx(1 / 3)
    n = len(tok("The final answer is 8.", add_special_tokens=False)["input_ids"])
    assert f["token_agreement"] == pytest.approx((1 + (n - 1) / n + 0) / 3)
    with pytest.raises(UnlockLensError, match="same problems"):
        transfer_fidelity(ours, native[:2], tok)


def _table(yes_yes, yes_no, no_yes, no_no):
    cells = [("y", "y")] * yes_yes + [("y", "n")] * yes_no + [("n", "y")] * no_yes + [("n", "n")] * no_no
    return [a for a, _ in cells], [b for _, b in cells]


@pytest.mark.parametrize(("cells", "kappa"), [
    # the worked examples of Wikipedia's "Cohen's kappa" article (p_o, p_e computed there by hand)
    ((20, 5, 10, 15), 0.4), ((45, 15, 25, 15), 0.1304), ((25, 35, 5, 35), 0.2593),
])
def test_cohen_kappa_worked_examples(cells, kappa):
    a, b = _table(*cells)
    assert cohen_kappa(a, b) == pytest.approx(kappa, abs=5e-5)
    assert confusion_counts(a, b) == {k: v for k, v in zip([("y", "y"), ("y", "n"), ("n", "y"), ("n", "n")], cells,
                                                          strict=True) if v}


def test_cohen_kappa_edges():
    assert cohen_kappa(list("abcab"), list("abcab")) == 1.0
    assert cohen_kappa(list("aaaa"), list("aaaa")) != cohen_kappa(list("aaaa"), list("aaaa"))  # NaN: p_e = 1
    assert cohen_kappa(list("abab"), list("baba")) == -1.0
    with pytest.raises(UnlockLensError, match="same items"):
        cohen_kappa(["a"], ["a", "b"])
