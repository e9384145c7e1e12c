"""Scripts that regenerate every figure and table from the command line (see README.md).

Shared wiring for the sweep scripts (no method logic: extraction, alignment, steering and
scoring are library calls). A model argument is an organism name (``chain-s``, ``chain-m``,
``chain-s-post``), a registry name (``smollm2-135m-instruct``, ``gemma-3-270m``), a local
Hugging Face directory or a hub id.

- organisms: key questions from the ``key`` split (short chains), trigger-free alignment
  questions from ``align`` (:func:`unlock_lens.organisms.demo.align_questions`), evaluation
  questions from ``dev``; locked = plain prompt, unlocked = ``STEP`` trigger;
- other models: GSM8K-train split into disjoint key / align / dev parts (seeded), each model
  with its default direct / CoT formats (chat formats when it has a chat template).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unlock_lens.activations import Variant
from unlock_lens.diagnostics.ablations import AblationSetup, prepare_ablation
from unlock_lens.masterkey import MasterKey, extract_masterkey
from unlock_lens.plots import METRIC_LABELS, save_figure
from unlock_lens.prompts import PromptFormat, default_formats
from unlock_lens.sweep.pair import MapBank, question_sets  # noqa: F401 - the scripts import them from here


def is_organism(name: str) -> bool:
    from unlock_lens.organisms import ORGANISMS

    return name in ORGANISMS


def load_any(name: str) -> Any:
    """A TransformerBridge for an organism name, a registry name, a local dir or a hub id."""
    if is_organism(name):
        from unlock_lens.organisms import load_organism

        return load_organism(name)
    from unlock_lens.models import load_model

    return load_model(name)


def formats_for(name: str, model: Any) -> tuple[PromptFormat, PromptFormat]:
    """(locked, unlocked) prompt formats of a model."""
    if is_organism(name):
        from unlock_lens.organisms import LOCKED, UNLOCKED

        return LOCKED, UNLOCKED
    return default_formats(model.tokenizer)


@dataclass
class Pair:
    """A source and a target with their formats, questions, and the source's key."""

    source_name: str
    target_name: str
    source: Any
    target: Any
    source_formats: tuple[PromptFormat, PromptFormat]
    target_formats: tuple[PromptFormat, PromptFormat]
    questions: dict[str, list[str]]
    key: MasterKey

    def native_key(self) -> MasterKey:
        """The target's own key (same contrast, same key questions): the transfer's reference."""
        locked, unlocked = self.target_formats
        return extract_masterkey(Variant(self.target, locked), Variant(self.target, unlocked),
                                 self.questions["key"], progress=True)

    def ablation(self, **kwargs: Any) -> AblationSetup:
        """:func:`prepare_ablation` on this pair (target's unlocked format as reference)."""
        return prepare_ablation(
            self.key, Variant(self.source, self.source_formats[0]),
            Variant(self.target, self.target_formats[0]), self.questions["align"],
            self.questions["eval"], unlocked_format=self.target_formats[1], **kwargs)


def load_pair(source: str, target: str, n_key: int, n_align: int, n_eval: int,
              seed: int = 0) -> Pair:
    """Boot both models, draw the questions, extract the source's prompt-driven key."""
    if is_organism(source) != is_organism(target):
        raise SystemExit("pair organisms with organisms (their task and prompts are their own)")
    src, tgt = load_any(source), load_any(target)
    qs = question_sets(is_organism(source), n_key, n_align, n_eval, seed)
    s_fmt, t_fmt = formats_for(source, src), formats_for(target, tgt)
    key = extract_masterkey(Variant(src, s_fmt[0]), Variant(src, s_fmt[1]), qs["key"],
                            progress=True)
    return Pair(source, target, src, tgt, s_fmt, t_fmt, qs, key)


def metric_title(metric: str, target: str) -> str:
    """Axis title of a proxy metric: the label every figure uses (``plots.METRIC_LABELS``),
    saying that an organism's CoT prompt is its ``STEP`` trigger."""
    title = METRIC_LABELS[metric]
    return f"{title}<br><sup>CoT prompt = STEP trigger</sup>" if is_organism(target) else title


def readable_scale(fig: Any, frame: pd.DataFrame, metric: str) -> Any:
    """Log y axis for KL when its values span more than 20x (random controls can dwarf the key)."""
    values = frame[f"{metric}_mean"].dropna()
    values = values[values > 0]
    if metric == "kl" and len(values) and values.max() > 20 * max(values.min(), 1e-3):
        lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
        steps = (1, 2, 5) if hi - lo <= 3 else (1,)
        ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps
                 if values.min() / 2 <= m * 10.0**e <= values.max() * 2]
        fig.update_yaxes(type="log", tickvals=ticks)
        # on a log axis annotations take log10 coordinates (shapes keep data coordinates)
        for note in fig.layout.annotations:
            if note.yref == "y" and note.y is not None and note.y > 0:
                note.y = math.log10(note.y)
    return fig


def common_args(description: str, default_out: str) -> argparse.ArgumentParser:
    """The arguments every sweep script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--source", default="chain-s", help="organism / registry name / local dir")
    p.add_argument("--target", default="chain-m", help="organism / registry name / local dir")
    p.add_argument("--n-key", type=int, default=64, help="key-extraction questions")
    p.add_argument("--n-align", type=int, default=256, help="alignment questions")
    p.add_argument("--n-eval", type=int, default=64, help="evaluation (dev) questions")
    p.add_argument("--seed", type=int, default=0, help="question splits")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on "
                   "small models and on a busy machine)")
    p.add_argument("--no-png", action="store_true", help="write HTML figures only")
    p.add_argument("--embed-js", action="store_true", help="self-contained HTML (no CDN)")
    p.add_argument("--replot", action="store_true",
                   help="only rebuild the figures from the CSVs already in --out (no models)")
    p.add_argument("--out", type=Path, default=Path(default_out))
    return p


def start(args: argparse.Namespace, module: str) -> float:
    """Set threads, create ``--out``, record the command; returns the start time."""
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.replot:
        command = " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])
        (args.out / "command.txt").write_text(command + "\n")
    return time.perf_counter()


def write(frame: pd.DataFrame | None, fig: Any, args: argparse.Namespace, stem: str) -> list[Path]:
    """``<out>/<stem>.csv`` (a figure's data) and/or ``<stem>.html`` / ``.png`` (the figure).

    The HTML loads plotly.js from its CDN (small files to commit) unless ``--embed-js``
    (self-contained, works offline, ~4.8 MB each); PNG unless ``--no-png``.
    """
    paths = []
    if frame is not None:
        frame.to_csv(args.out / f"{stem}.csv", index=False)
        paths.append(args.out / f"{stem}.csv")
    if fig is not None:
        paths += save_figure(fig, args.out / stem, png=False if args.no_png else None,
                             include_plotlyjs=True if args.embed_js else "cdn")
    return paths


@dataclass
class Direction:
    """What every per-direction real-pair script opens with: its output folder, a timed log,
    both models in the library pipeline, and the GSM8K-train pool with its key / align parts."""

    out: Path
    t0: float
    pipe: Any
    pool: list[str]
    key_qs: list[str]
    align_qs: list[str]

    def log(self, *parts: Any) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f}s]", *parts, flush=True)


def open_direction(args: argparse.Namespace) -> Direction:
    """Threads, ``--out/<source>_to_<target>/``, both models (library protocol) and the key /
    alignment questions (``--n-key`` / ``--n-align``) of GSM8K train."""
    import torch

    from unlock_lens.evaluate.datasets import load_dataset
    from unlock_lens.unlock import Unlock

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out / f"{Path(args.source).name}_to_{Path(args.target).name}"
    out.mkdir(parents=True, exist_ok=True)
    pipe = Unlock(load_any(args.source), load_any(args.target), protocol="library")
    pool = [p.question for p in load_dataset("gsm8k", "train")]
    key_qs, align_qs = pipe.protocol.question_sets(pool, args.n_key, args.n_align)
    return Direction(out, t0, pipe, pool, key_qs, align_qs)


def log(t0: float, *parts: Any) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s]", *parts, flush=True)


def write_keeping_reading(path: Path, body: str) -> Path:
    """Write a generated ``body`` to ``path``, keeping the hand-written ``## Reading`` section
    (and all after it) of the file already there."""
    old = path.read_text() if path.exists() else ""
    path.write_text(body + ("\n## Reading" + old.split("\n## Reading", 1)[1] if "\n## Reading" in old else ""))
    return path
