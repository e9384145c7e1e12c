"""What a sweep steers: a source and target, their formats and disjoint question sets, both
keys, and the layer maps per (alignment data kind, method, rank); plus the models' shapes read
from their config files, so a grid is checked before any model loads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlock_lens.activations import Variant, capture_pair
from unlock_lens.align.layers import (
    AlignSpec,
    LayerPairing,
    fit_layer_maps,
    fit_layer_maps_from_stats,
)
from unlock_lens.alignment_data import alignment_stats, parse_data
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import generate_continuations
from unlock_lens.masterkey import MasterKey, extract_masterkey
from unlock_lens.prompts import PromptFormat


def _config_dir(name: str) -> Path:
    from unlock_lens.models import resolve_model_dir
    from unlock_lens.organisms import ORGANISMS, organism_dir

    return organism_dir(name) if name in ORGANISMS else resolve_model_dir(name)


def config_shape(name: str) -> tuple[int, int]:
    """(layers, width) of a model from its config.json, without loading the weights."""
    cfg = json.loads((_config_dir(name) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    try:
        return int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    except KeyError as err:
        raise UnlockLensError(f"{name}: config.json has no {err}; cannot check the grid before loading") from None


def rank_limits(kinds: Sequence[str], n_align: int, d_source: int, d_target: int) -> dict[str, int]:
    """Largest map rank per data kind known before any capture: one pair per question for
    ``last``; token kinds give at least as many pairs as questions, bounded by the widths."""
    return {k: min(n_align, d_source, d_target) if parse_data(k) == ("last",) else min(d_source, d_target)
            for k in kinds}


@dataclass
class SweepPair:
    """A source and target with their locked / unlocked formats, question sets and both keys."""

    source: Any
    target: Any
    source_formats: tuple[PromptFormat, PromptFormat]
    target_formats: tuple[PromptFormat, PromptFormat]
    questions: dict[str, list[str]]
    key: MasterKey
    native: MasterKey


def question_sets(organisms: bool, n_key: int, n_align: int, n_eval: int, seed: int = 0) -> dict[str, list[str]]:
    """Disjoint ``key`` / ``align`` / ``eval`` questions: the organisms' ``key`` split, trigger-free
    ``align`` questions and ``dev`` split (short chains); otherwise GSM8K-train's seeded key /
    align / dev parts."""
    if organisms:
        from unlock_lens.organisms import SHORT_OPS, generate_questions
        from unlock_lens.organisms.demo import align_questions

        return {"key": generate_questions(n_key, split="key", n_ops=SHORT_OPS, seed=seed),
                "align": align_questions("trigger-free", n_align, seed=seed),
                "eval": generate_questions(n_eval, split="dev", n_ops=SHORT_OPS, seed=seed)}
    from unlock_lens.evaluate import TRAIN_SPLIT_FRACTIONS, load_dataset, split_problems

    parts = split_problems(load_dataset("gsm8k", "train"), TRAIN_SPLIT_FRACTIONS, seed=seed)
    return {"key": [p.question for p in parts["key"][:n_key]],
            "align": [p.question for p in parts["align"][:n_align]],
            "eval": [p.question for p in parts["dev"][:n_eval]]}


def load_pair(source: str, target: str, *, n_key: int = 64, n_align: int = 256, n_eval: int = 64,
              seed: int = 0, device: str = "cpu") -> SweepPair:
    """Boot both models (organisms by name), draw disjoint key / align / eval questions and
    extract both prompt-driven keys (locked vs unlocked format, the same key questions)."""
    from unlock_lens.models import load_model
    from unlock_lens.organisms import LOCKED, ORGANISMS, UNLOCKED, load_organism
    from unlock_lens.prompts import default_formats

    organisms = source in ORGANISMS
    if organisms != (target in ORGANISMS):
        raise UnlockLensError("pair organisms with organisms: their task and prompts are their own")
    load = load_organism if organisms else (lambda name: load_model(name, device=device))
    src, tgt = load(source), load(target)
    s_fmt = (LOCKED, UNLOCKED) if organisms else default_formats(src.tokenizer)
    t_fmt = (LOCKED, UNLOCKED) if organisms else default_formats(tgt.tokenizer)
    qs = question_sets(organisms, n_key, n_align, n_eval, seed)

    def key_of(model: Any, fmt: tuple[PromptFormat, PromptFormat]) -> MasterKey:
        return extract_masterkey(Variant(model, fmt[0]), Variant(model, fmt[1]), qs["key"])

    return SweepPair(src, tgt, s_fmt, t_fmt, qs, key_of(src, s_fmt), key_of(tgt, t_fmt))


class MapBank:
    """The layer maps of each (data kind, method, rank) from ``source`` to ``target`` on the
    alignment questions, fitted on first use; each kind's data is captured once (``last``:
    dense last-token rows; other kinds: streamed Gram statistics of at most ``max_pairs``).
    ``continuations`` kinds need ``unlocked`` (the source's unlocked variant), whose greedy
    outputs (``continuation_tokens``, cut at ``continuation_stop``) are generated once."""

    def __init__(self, source: Variant, target: Variant, align_qs: list[str], pairing: LayerPairing,
                 max_pairs: int, progress: bool = False, *, unlocked: Variant | None = None,
                 continuation_tokens: int = 64, continuation_stop: tuple[str, ...] = ()) -> None:
        self.source, self.target, self.align_qs, self.pairing = source, target, align_qs, pairing
        self.max_pairs, self.progress = max_pairs, progress
        self.unlocked, self.continuation_tokens, self.continuation_stop = unlocked, continuation_tokens, continuation_stop
        self.continuations: list[str] | None = None
        self.captured: dict[str, Any] = {}
        self.maps: dict[tuple[str, str, int], Any] = {}

    def _continuations(self, kind: str) -> list[str] | None:
        if "continuations" not in parse_data(kind):
            return None
        if self.unlocked is None:
            raise UnlockLensError(f"alignment data {kind!r} needs MapBank(unlocked=the source's unlocked variant)")
        if self.continuations is None:
            self.continuations = generate_continuations(
                self.unlocked, self.align_qs, max_new_tokens=self.continuation_tokens,
                stop_strings=self.continuation_stop, progress=self.progress)
        return self.continuations

    def data(self, kind: str) -> Any:
        if kind not in self.captured:
            p = self.pairing
            self.captured[kind] = (
                capture_pair(self.source, self.target, self.align_qs, p.source_layers, p.target_layers)
                if kind == "last" else
                alignment_stats(self.source, self.target, self.align_qs, p, data=kind, max_pairs=self.max_pairs,
                                progress=self.progress, continuations=self._continuations(kind)))
        return self.captured[kind]

    def n_fit(self, kind: str) -> int:
        """How many pairs the kind's maps are fitted on (bounds the rank)."""
        data = self.data(kind)
        return len(self.align_qs) if kind == "last" else min(s.n for s in data.values())

    def __call__(self, kind: str, method: str, rank: int) -> Any:
        if (kind, method, rank) not in self.maps:
            spec, data = AlignSpec(method, rank), self.data(kind)
            self.maps[kind, method, rank] = (fit_layer_maps(*data, self.pairing, spec) if kind == "last"
                                             else fit_layer_maps_from_stats(data, self.pairing, spec))
        return self.maps[kind, method, rank]
