"""Public API of unlock_lens.evaluate (loaded lazily)."""

from .answers import (
    answers_match as answers_match,
    extract_answer as extract_answer,
    format_number as format_number,
    normalize_number as normalize_number,
)
from .datasets import (
    DATASETS as DATASETS,
    DEFAULT_SPLIT_FRACTIONS as DEFAULT_SPLIT_FRACTIONS,
    TRAIN_SPLIT_FRACTIONS as TRAIN_SPLIT_FRACTIONS,
    DatasetSpec as DatasetSpec,
    Problem as Problem,
    default_data_dir as default_data_dir,
    load_dataset as load_dataset,
    load_jsonl as load_jsonl,
    question_fingerprint as question_fingerprint,
    remove_overlap as remove_overlap,
    split_problems as split_problems,
)
from .results import (
    CONDITIONS as CONDITIONS,
    EvalResults as EvalResults,
    markdown_table as markdown_table,
    shows_working as shows_working,
    summarize as summarize,
)
from .runner import (
    AlphaSelection as AlphaSelection,
    Decoding as Decoding,
    evaluate as evaluate,
    select_alpha as select_alpha,
)
from .stats import (
    mcnemar_exact as mcnemar_exact,
    paired_bootstrap_diff as paired_bootstrap_diff,
    wilson_interval as wilson_interval,
)

__all__ = [
    "AlphaSelection",
    "CONDITIONS",
    "DATASETS",
    "DEFAULT_SPLIT_FRACTIONS",
    "TRAIN_SPLIT_FRACTIONS",
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
