"""The shipped organisms: names, where their weights live, and loading them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlock_lens.errors import UnlockLensError

ZOO_DIR = Path(__file__).parent / "zoo"

#: name -> short description of every shipped organism
ORGANISMS: dict[str, str] = {
    "chain-s": "Llama, 3 layers x d96, seed 1 (the small base model)",
    "chain-m": "Qwen2, 4 layers x d128, seed 2 (the mid base model)",
    "chain-s-post": "chain-s fine-tuned on trigger-free step-by-step data (post-trained)",
}



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
