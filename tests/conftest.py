"""Shared fixtures: tiny random models of several architectures, built offline once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread (thread hand-off dominates their matmuls)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "There are 12 birds on a tree and 4 fly away. How many are left?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
    "If x / 4 = 6, what is x?",
    "Sam had 20 dollars and spent 8. How much money is left?",
    "A farmer has 15 cows and buys 9 more. How many cows now?",
    "What is 100 minus 37?",
]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Random HF model dirs: qwen2/llama/gemma3/gpt2 (3 layers, d64) and a deeper qwen2 (5 x d96)."""
    from unlock_lens.random_models import ARCHITECTURES, build_random_model

    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {arch: build_random_model(root / arch, arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}
    dirs["qwen2-deep"] = build_random_model(root / "qwen2-deep", "qwen2", d_model=96, n_layers=5, seed=7)
    return dirs


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs) -> dict:
    """Booted bridges for each tiny dir (shared: tests must leave them unhooked)."""
    from unlock_lens.models import load_model

    return {name: load_model(str(path)) for name, path in tiny_dirs.items()}


@pytest.fixture()
def qwen(tiny_models):
    return tiny_models["qwen2"]


@pytest.fixture()
def questions() -> list[str]:
    return list(QUESTIONS)

