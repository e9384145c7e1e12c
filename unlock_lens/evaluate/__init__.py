"""Evaluation data and answer checking: problem sets, leakage-free splits, answer matching."""

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

__all__ = [
    "DATASETS",
    "DEFAULT_SPLIT_FRACTIONS",
    "DatasetSpec",
    "Problem",
    "answers_match",
    "default_data_dir",
    "extract_answer",
    "format_number",
    "load_dataset",
    "load_jsonl",
    "normalize_number",
    "question_fingerprint",
    "remove_overlap",
    "split_problems",
]
