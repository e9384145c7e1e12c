"""What a task is to the evaluation runner: how to score one output against its problem.

The runner (:func:`unlock_lens.evaluate.runner.evaluate`) generates; a :class:`Task` says,
for one problem and one output, the extracted answer, whether it is correct, and whether the
output is in the unlocked format (step-by-step working). Math word problems are the default;
the organisms' task is ``unlock_lens.organisms.task.ORGANISM_TASK``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unlock_lens.evaluate.answers import answers_match, extract_answer
from unlock_lens.evaluate.results import shows_working


@dataclass(frozen=True)
class Scored:
    """One output scored: the answer found (None: none), correctness, unlocked format."""

    answer: Any
    correct: bool
    unlocked_format: bool


@dataclass(frozen=True)
class Task:
    """A scorer: ``score(problem, output) -> Scored``; ``format_rule`` is recorded in results."""

    name: str
    score: Callable[[Any, str], Scored]
    format_rule: str


def _score_math(problem: Any, text: str) -> Scored:
    answer = extract_answer(text)
    return Scored(answer, answers_match(answer, problem.answer), shows_working(text))


MATH_WORD_PROBLEMS = Task(
    "math word problems", _score_math,
    "shows_working: an 'a op b = c' step or >= 2 steps of >= 3 words before the final-answer marker",
)
