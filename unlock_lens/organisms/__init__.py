"""Model organisms: tiny trained transformers with a known, locked capability.

A family of small models (different depth, width, architecture and seed) trained on one
synthetic task (:mod:`unlock_lens.organisms.task`): chains of mod-10 operations that they
answer poorly in one step but well when they write intermediate values first. Without the
``STEP`` trigger they answer short chains directly (locked); with it, step by step (unlocked);
long chains they always solve step by step. ``chain-s-post`` is ``chain-s`` fine-tuned on
trigger-free step-by-step data (the model-driven contrast).

The weights ship in ``unlock_lens/organisms/zoo/<name>/`` as standard Hugging Face
directories, so they load exactly like hub models::

    from unlock_lens.organisms import load_organism, LOCKED, UNLOCKED, generate_questions
    model = load_organism("chain-s")                 # a TransformerBridge (via load_model)

Retrain with ``python -m unlock_lens.organisms.train``; see ``run_demo`` for the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlock_lens.errors import UnlockLensError
from unlock_lens.organisms.task import (
    LOCKED,
    LONG_OPS,
    SHORT_OPS,
    TRIGGER,
    UNLOCKED,
    OrganismFormat,
    Problem,
    Score,
    TaskResult,
    format_from_dict,
    generate_problems,
    generate_questions,
    is_step_format,
    max_new_tokens,
    parse_answer,
    score_completion,
    score_completions,
    split_of,
)

ZOO_DIR = Path(__file__).parent / "zoo"

#: name -> short description of every shipped organism
ORGANISMS: dict[str, str] = {
    "chain-s": "Llama, 3 layers x d96, seed 1 (the small base model)",
    "chain-m": "Qwen2, 4 layers x d128, seed 2 (the mid base model)",
    "chain-s-post": "chain-s fine-tuned on trigger-free step-by-step data (post-trained)",
}

__all__ = [
    "LOCKED",
    "LONG_OPS",
    "ORGANISMS",
    "SHORT_OPS",
    "TRIGGER",
    "UNLOCKED",
    "ZOO_DIR",
    "OrganismFormat",
    "Problem",
    "Score",
    "TaskResult",
    "format_from_dict",
    "generate_problems",
    "generate_questions",
    "is_step_format",
    "load_organism",
    "max_new_tokens",
    "organism_dir",
    "parse_answer",
    "run_demo",
    "score_completion",
    "score_completions",
    "split_of",
]


def organism_dir(name: str) -> Path:
    """The shipped HF directory of organism ``name``."""
    if name not in ORGANISMS:
        raise UnlockLensError(f"unknown organism {name!r}; choose one of {sorted(ORGANISMS)}")
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        raise UnlockLensError(
            f"organism {name!r} has no weights in {path}; train it with "
            f"`python -m unlock_lens.organisms.train --only {name}`"
        )
    return path


def load_organism(name: str, **kwargs: Any):
    """Boot organism ``name`` as a TransformerBridge through :func:`unlock_lens.models.load_model`."""
    from unlock_lens.models import load_model

    return load_model(str(organism_dir(name)), **kwargs)


def __getattr__(name: str) -> Any:
    if name == "run_demo":
        from unlock_lens.organisms.demo import run_demo

        return run_demo
    raise AttributeError(f"module 'unlock_lens.organisms' has no attribute {name!r}")
