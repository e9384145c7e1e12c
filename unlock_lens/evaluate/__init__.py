"""Evaluation data and answer checking: problem sets, leakage-free splits, answer matching,
the condition runner (direct / CoT prompt / steered / native key / random), statistics and
results tables. The runner and results names load lazily (they import torch)."""

from importlib import import_module
from typing import Any

from unlock_lens.evaluate.answers import (
    answers_match,
    extract_answer,
    format_number,
    normalize_number,
)
from unlock_lens.evaluate.datasets import (
    DATASETS,
    DEFAULT_SPLIT_FRACTIONS,
    DatasetSpec,
    Problem,
    default_data_dir,
    load_dataset,
    load_jsonl,
    question_fingerprint,
    remove_overlap,
    split_problems,
)
from unlock_lens.evaluate.stats import mcnemar_exact, paired_bootstrap_diff, wilson_interval

__all__ = [
    "CONDITIONS",
    "DATASETS",
    "DEFAULT_SPLIT_FRACTIONS",
    "AlphaSelection",
    "DatasetSpec",
    "Decoding",
    "EvalResults",
    "Problem",
    "answers_match",
    "default_data_dir",
    "evaluate",
    "extract_answer",
    "format_number",
    "load_dataset",
    "load_jsonl",
    "markdown_table",
    "mcnemar_exact",
    "normalize_number",
    "paired_bootstrap_diff",
    "question_fingerprint",
    "remove_overlap",
    "select_alpha",
    "shows_working",
    "split_problems",
    "summarize",
    "wilson_interval",
]

_LAZY = {
    "CONDITIONS": "unlock_lens.evaluate.results",
    "EvalResults": "unlock_lens.evaluate.results",
    "markdown_table": "unlock_lens.evaluate.results",
    "shows_working": "unlock_lens.evaluate.results",
    "summarize": "unlock_lens.evaluate.results",
    "AlphaSelection": "unlock_lens.evaluate.runner",
    "Decoding": "unlock_lens.evaluate.runner",
    "evaluate": "unlock_lens.evaluate.runner",
    "select_alpha": "unlock_lens.evaluate.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unlock_lens.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
