"""``unlock-lens sweep``: where, how strongly and through which maps a transferred key moves
the target's first token, with its references, resumable cell by cell.

A grid (:class:`SweepGrid`) crosses layer sets (``single``: each target layer alone; ``bands:W``
or ``bands:W:S``: contiguous bands of W layers every S; ``loo``: all but one; ``all``; or an
explicit set ``3``, ``1-3``, ``0+2``) x map rank x alpha x alignment method x alignment data
kind. Each cell steers the target's locked (direct) prompts at the last prompt position and
scores the next-token distribution against the target's own unlocked (CoT) prompt's
(:mod:`~unlock_lens.diagnostics.restricted_vocab`: ``kl``, ``entropy``, ``p_ref_top``,
``top1_agree``, means over prompts) for three steerings on the same layers and alpha:

- ``key``: the source's key through the cell's maps;
- ``random``: ``n_random`` (>= 10 by default) random *source* directions of the key's
  per-layer norms through the same maps (the random-mapped control: same target subspace);
- ``native``: the target's own key (same contrast and key questions), the ceiling.

Scores come from one unsteered prefix KV cache of the prompts
(:mod:`~unlock_lens.diagnostics.cached_scoring`), every configuration of a cell in one call
of :func:`_measure_configurations` (full vocabulary: read out in chunks, no logits held,
:mod:`~unlock_lens.diagnostics.readout`). Each finished cell is appended to ``cells.jsonl`` in the
output folder (one line, flushed and synced), so a sweep stopped at any point resumes where it
stopped with the same settings; other settings in the same folder are refused. At the end:
``sweep.csv``, ``sweep.json`` and ``report.html`` (:mod:`~unlock_lens.sweep.report`).

Default pair: the organisms ``chain-s`` -> ``chain-m`` (seconds); any two models load by name
(``smollm2-135m-instruct`` -> ``gemma-3-270m``: GSM8K-train key / align / dev questions).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import typer
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import Variant, final_logits
from unlock_lens.align import ALIGNMENT_METHODS
from unlock_lens.align.base import _RANK_FREE
from unlock_lens.align.layers import (
    LayerPairing,
    map_directions,
)
from unlock_lens.alignment_data import parse_data
from unlock_lens.controls import random_mapped
from unlock_lens.diagnostics import cached_scoring
from unlock_lens.diagnostics.fidelity import direction_rank, fidelity_ratio, greedy_reference
from unlock_lens.diagnostics.readout import STREAMED_PREFIX_BATCH, readout_configurations
from unlock_lens.diagnostics.restricted_vocab import MEASURES, FirstTokenReference
from unlock_lens.errors import UnlockLensError
from unlock_lens.resumable import append_row, open_run, settings_record
from unlock_lens.steer import Steering
from unlock_lens.sweep.pair import (
    MapBank,
    SweepPair,
    config_shape,
    load_pair,
    rank_limits,
)

DEFAULT_SOURCE, DEFAULT_TARGET = "chain-s", "chain-m"
#: a configuration measure beyond the first-token ones (e.g. the likelihood fidelity of a
#: teacher-forced continuation): the cell's steerings in, one number per steering out
ConfigMeasure = Callable[[Sequence[Steering]], Sequence[float]]


# ---- the grid -----------------------------------------------------------------------------


def layer_sets(spec: str, n_layers: int) -> list[tuple[str, list[int]]]:
    """(label, target layers) of one layer-set spec (see the module docstring)."""
    every = list(range(n_layers))

    def known(layers: list[int]) -> list[int]:
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise UnlockLensError(f"--layers {spec!r}: layers {bad} do not exist; the target has layers 0-{n_layers - 1}")
        return layers

    if spec == "all":
        return [("all", every)]
    if spec == "single":
        return [(f"L{t}", [t]) for t in every]
    if spec == "loo":
        if n_layers < 2:
            raise UnlockLensError("--layers loo needs a target with at least 2 layers")
        return [(f"all but L{t}", [u for u in every if u != t]) for t in every]
    if m := re.fullmatch(r"bands:(\d+)(?::(\d+))?", spec):
        width, stride = int(m.group(1)), int(m.group(2) or 1)
        if not 1 <= width <= n_layers or stride < 1:
            raise UnlockLensError(f"--layers {spec!r}: need 1 <= width <= {n_layers} layers and stride >= 1")
        return [(f"L{s}-{s + width - 1}", every[s:s + width]) for s in range(0, n_layers - width + 1, stride)]
    if m := re.fullmatch(r"(\d+)-(\d+)", spec):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise UnlockLensError(f"--layers {spec!r}: the range is empty (write low-high)")
        return [(f"L{lo}-{hi}", known(list(range(lo, hi + 1))))]
    if re.fullmatch(r"\d+(\+\d+)*", spec):
        layers = sorted({int(x) for x in spec.split("+")})
        return [("L" + "+".join(map(str, layers)), known(layers))]
    raise UnlockLensError(f"--layers {spec!r} is not a layer set; use all, single, loo, bands:W[:S], "
                          "a layer (3), a range (1-3) or a set (0+2)")


@dataclass(frozen=True)
class Cell:
    """One grid point: which layers, through which maps, how strongly."""

    layer_set: str
    layers: tuple[int, ...]
    kind: str
    method: str
    rank: int
    alpha: float

    @property
    def id(self) -> str:
        return f"{self.layer_set}|{self.kind}|{self.method}|r{self.rank}|a{self.alpha:g}"

    def params(self) -> dict[str, Any]:
        return {"cell": self.id, "layers": ",".join(map(str, self.layers)), "layer_set": self.layer_set,
                "kind": self.kind, "method": self.method, "rank": self.rank, "alpha": self.alpha}


@dataclass(frozen=True)
class SweepGrid:
    """Layer sets x ranks x alphas x methods x alignment data kinds, and the random references."""

    layers: tuple[str, ...] = ("single", "all")
    ranks: tuple[int, ...] = (16,)
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    methods: tuple[str, ...] = ("svd",)
    kinds: tuple[str, ...] = ("last",)
    n_random: int = 10

    def check(self, n_layers: int, rank_limits: Mapping[str, int]) -> None:
        """Refuse a grid that cannot run, in one line (before any model loads).

        ``rank_limits``: per data kind, the largest rank a map can have (min(pairs, d_s, d_t)).
        """
        for name in ("layers", "ranks", "alphas", "methods", "kinds"):
            if not getattr(self, name):
                raise UnlockLensError(f"--{name}: the list is empty; give at least one value")
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise UnlockLensError(f"--alphas {bad}: every alpha must be a finite number")
        unknown = [m for m in self.methods if m not in ALIGNMENT_METHODS]
        if unknown:
            raise UnlockLensError(f"--methods {unknown}: not alignment methods; choose from {sorted(ALIGNMENT_METHODS)}")
        for kind in self.kinds:
            try:
                parse_data(kind)
            except (UnlockLensError, ValueError) as err:
                raise UnlockLensError(f"--kinds {kind!r}: {err}") from None
        for kind, limit in rank_limits.items():
            over = [r for r in self.ranks if not 1 <= r <= limit]
            if over and any(m not in _RANK_FREE for m in self.methods):
                raise UnlockLensError(f"--ranks {over}: with {kind!r} data a map's rank must be in [1, {limit}] "
                                      "(min of alignment pairs and both widths); lower the rank or raise --n-align")
        if self.n_random < 1:
            raise UnlockLensError(f"--n-random must be at least 1, got {self.n_random}")
        for spec in self.layers:
            layer_sets(spec, n_layers)

    def cells(self, n_layers: int) -> list[Cell]:
        sets = [s for spec in self.layers for s in layer_sets(spec, n_layers)]
        return [Cell(label, tuple(layers), kind, method, rank, float(alpha))
                for kind in self.kinds for method in self.methods
                for rank in (self.ranks if method not in _RANK_FREE else self.ranks[:1])
                for label, layers in sets for alpha in self.alphas]


# ---- scoring ------------------------------------------------------------------------------


def _measure_configurations(model: Any, cache: Any, reference: FirstTokenReference,
                            steerings: Sequence[Steering | None]) -> list[dict[str, Tensor]]:
    """Every configuration's first-token measures on the shared prefix cache, many per forward:
    the one place a sweep calls the model. Full vocabulary: read out in chunks, no logits held
    (:func:`~unlock_lens.diagnostics.readout.readout_configurations`); restricted (``vocab_k``):
    from the logits (:func:`~unlock_lens.diagnostics.cached_scoring.score_configurations`)."""
    if reference.support is None:
        stats = readout_configurations(model, cache, steerings, reference.probabilities, reference.top[:, None])
        return [reference.readout_measures(s) for s in stats]
    return [reference.measures(x) for x in cached_scoring.score_configurations(model, cache, steerings)]


def _means(measures: Mapping[str, Tensor]) -> dict[str, float]:
    return {m: float(v.mean()) for m, v in measures.items()}


@dataclass
class SweepSettings:
    """Everything besides the grid that decides a sweep's numbers (recorded; a resume must match)."""

    source: str = DEFAULT_SOURCE
    target: str = DEFAULT_TARGET
    n_key: int = 64
    n_align: int = 256
    n_eval: int = 64
    seed: int = 0
    max_pairs: int = 4000
    normalisation: str = "rotate"
    vocab_k: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    extra_measures: tuple[str, ...] = field(default=())
    fidelity_tokens: int = 0


class Sweeper:
    """The per-sweep state every cell reuses: maps, prefix cache, reference, native steerings."""

    def __init__(self, pair: SweepPair, settings: SweepSettings, grid: SweepGrid,
                 extra_measures: Mapping[str, ConfigMeasure] | None = None, progress: bool = False) -> None:
        self.pair, self.settings, self.grid = pair, settings, grid
        self.extra = dict(extra_measures or {})
        tgt, (locked, unlocked) = pair.target, pair.target_formats
        n_src, n_tgt = pair.key.source.n_layers, int(tgt.cfg.n_layers)
        self.pairing = LayerPairing.by_depth(n_src, n_tgt)
        self.pairing.require_source(pair.key.layers)
        self.bank = MapBank(Variant(pair.source, pair.source_formats[0]), Variant(tgt, locked),
                            pair.questions["align"], self.pairing, settings.max_pairs, progress,
                            unlocked=Variant(pair.source, pair.source_formats[1]))
        tok, qs = tgt.tokenizer, pair.questions["eval"]
        reference = final_logits(tgt, unlocked.render_all(qs, tok), batch_size=settings.batch_size,
                                 special_tokens=unlocked.special_tokens)
        self.reference = FirstTokenReference(reference, settings.vocab_k)
        self.cache = cached_scoring.prefix_cache(tgt, locked.render_all(qs, tok),
                                                 batch_size=min(settings.batch_size, STREAMED_PREFIX_BATCH),
                                                 special_tokens=locked.special_tokens)
        self.direct = _means(_measure_configurations(tgt, self.cache, self.reference, [None])[0])
        self.random_seeds = range(settings.seed, settings.seed + grid.n_random)
        self.locked_prompts = locked.render_all(qs, tok)
        self._references: dict[tuple[str, float], tuple[Any, Any]] = {}
        self._native: dict[tuple[str, float], dict[str, float]] = {}

    def _steering(self, directions: Mapping[int, Tensor], cell: Cell) -> Steering:
        return Steering(directions, cell.alpha, self.settings.normalisation, "last_prompt",
                        list(cell.layers), self.pair.key.hook)

    def score(self, cell: Cell) -> dict[str, Any]:
        """One cell's row: the key's, the random-mapped directions' and the native key's measures."""
        t0 = time.perf_counter()
        maps = self.bank(cell.kind, cell.method, cell.rank)
        steerings = [self._steering(map_directions(self.pair.key, maps), cell)]
        steerings += [self._steering(random_mapped(self.pair.key, maps, seed), cell) for seed in self.random_seeds]
        native_key = (cell.layer_set, cell.alpha)
        if native_key not in self._native:
            native = self.pair.native
            steerings.append(self._steering({t: native.direction(t) for t in cell.layers}, cell))
        per = _measure_configurations(self.pair.target, self.cache, self.reference, steerings)
        if native_key not in self._native:
            self._native[native_key] = _means(per.pop())
        row: dict[str, Any] = cell.params()
        n = len(per[0]["kl"])
        for m in MEASURES:
            row[f"key_{m}"] = float(per[0][m].mean())
        row["key_kl_sem"] = float(per[0]["kl"].std() / math.sqrt(n)) if n > 1 else math.nan
        for m in MEASURES:
            values = torch.tensor([float(p[m].mean()) for p in per[1:]], dtype=torch.float64)
            row[f"random_{m}_mean"] = float(values.mean())
            row[f"random_{m}_std"] = float(values.std()) if len(values) > 1 else math.nan
            row[f"random_{m}_min"], row[f"random_{m}_max"] = float(values.min()), float(values.max())
        row.update({f"native_{m}": v for m, v in self._native[native_key].items()})
        row["key_below_all_random"] = bool(row["key_kl"] < row["random_kl_min"])
        if self.settings.fidelity_tokens:
            row.update(self.fidelity(cell, steerings[: 1 + self.grid.n_random]))
        for name, measure in self.extra.items():
            values = list(measure(steerings[: 1 + self.grid.n_random]))
            row[f"key_{name}"] = float(values[0])
            row[f"random_{name}_mean"] = float(sum(values[1:]) / max(1, len(values) - 1))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    def fidelity(self, cell: Cell, steerings: Sequence[Steering]) -> dict[str, Any]:
        """Likelihood fidelity F of the key and of each random-mapped direction (the first
        steering is the key): the native key's greedy continuations on these layers at this
        alpha are the reference (built once per layer set and alpha), every condition is scored
        on one prefix cache, and the key's F is ranked among the random directions'."""
        tgt, ref_id = self.pair.target, (cell.layer_set, cell.alpha)
        native = self._steering({t: self.pair.native.direction(t) for t in cell.layers}, cell)
        if ref_id not in self._references:
            ref = greedy_reference(tgt, self.locked_prompts, name="native", steering=native,
                                   max_new_tokens=self.settings.fidelity_tokens,
                                   batch_size=self.settings.batch_size)
            self._references[ref_id] = ref, cached_scoring.prefix_cache(
                tgt, list(ref.prompts), batch_size=self.settings.batch_size)
        ref, cache = self._references[ref_id]
        ll, _ = cached_scoring.continuation_loglik(tgt, cache, ref.tokens, [None, native, *steerings])
        gains = ll[1:] - ll[0]
        f = [fidelity_ratio(g, gains[0]) for g in gains[1:]]
        rank, p = direction_rank(f[0], f[1:])
        return {"key_fidelity": f[0], "random_fidelity_mean": float(np.mean(f[1:])),
                "random_fidelity_max": float(np.max(f[1:])), "key_fidelity_rank": rank,
                "key_fidelity_p": p}


# ---- the resumable run --------------------------------------------------------------------


def _fingerprint(grid: SweepGrid, settings: SweepSettings) -> dict[str, Any]:
    return settings_record(grid=asdict(grid), settings=asdict(settings))


def _start(out: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The folder's finished cells, after checking it holds this sweep (or nothing)."""
    return open_run(out, record, meta="sweep_meta.json", rows="cells.jsonl", what="a sweep")


def run_sweep(
    grid: SweepGrid,
    settings: SweepSettings,
    out: str | Path,
    *,
    pair: SweepPair | None = None,
    extra_measures: Mapping[str, ConfigMeasure] | None = None,
    progress: bool = True,
    report: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the sweep into ``out``; returns the table, one row per cell in grid order.

    The grid is checked before any model loads. ``pair``: already loaded models and keys
    (default: :func:`load_pair` of the settings). ``extra_measures``: more per-configuration
    numbers (:data:`ConfigMeasure`), named in the table as ``key_<name>`` / ``random_<name>_mean``.
    """
    out = Path(out)
    s = settings
    if extra_measures:
        s = SweepSettings(**{**asdict(s), "extra_measures": tuple(sorted(extra_measures))})
    check_grid(grid, s)
    record = _fingerprint(grid, s)
    done = {row["cell"]: row for row in _start(out, record)}
    n_layers = config_shape(s.target)[0]
    cells = grid.cells(n_layers)
    todo = [c for c in cells if c.id not in done]
    t0 = time.perf_counter()
    if todo:
        pair = pair or _load_pair(s)
        sweeper = Sweeper(pair, s, grid, extra_measures, progress=progress)
        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="sweep cells", unit="cell",
                  disable=not progress) as bar:
            for cell in todo:
                row = sweeper.score(cell)
                append_row(out / "cells.jsonl", row)
                done[cell.id] = row
                bar.update()
        direct = sweeper.direct
    else:
        direct = json.loads((out / "sweep.json").read_text())["direct"] if (out / "sweep.json").exists() else {}
        if not direct:  # finished cells but no summary yet: the unsteered row needs the models
            pair = pair or _load_pair(s)
            direct = Sweeper(pair, s, SweepGrid(n_random=1)).direct
    table = pd.DataFrame([done[c.id] for c in cells])
    _finish(out, table, record, direct, time.perf_counter() - t0, report)
    return table


def _load_pair(s: SweepSettings) -> SweepPair:
    return load_pair(s.source, s.target, n_key=s.n_key, n_align=s.n_align, n_eval=s.n_eval, seed=s.seed,
                     device=s.device)


def check_grid(grid: SweepGrid, settings: SweepSettings) -> None:
    """:meth:`SweepGrid.check` with the pair's shapes read from the config files."""
    n_src, d_src = config_shape(settings.source)
    n_tgt, d_tgt = config_shape(settings.target)
    grid.check(n_tgt, rank_limits(grid.kinds, settings.n_align, d_src, d_tgt))
    if "identity" in grid.methods and d_src != d_tgt:
        raise UnlockLensError(f"--methods identity needs equal widths; {settings.source} has {d_src}, "
                              f"{settings.target} {d_tgt}")
    for flag in ("n_key", "n_align", "n_eval", "batch_size"):
        if getattr(settings, flag) < 1:
            raise UnlockLensError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(settings, flag)}")
    if settings.fidelity_tokens < 0:
        raise UnlockLensError(f"--fidelity-tokens must be 0 (off) or more, got {settings.fidelity_tokens}")
    if settings.vocab_k is not None and settings.vocab_k < 1:
        raise UnlockLensError(f"--vocab-k must be at least 1, got {settings.vocab_k}")


def _finish(out: Path, table: pd.DataFrame, record: dict[str, Any], direct: dict[str, float],
            seconds: float, report: bool) -> None:
    from unlock_lens.artifacts import atomic_write_bytes

    summary = {**record, "direct": direct, "seconds_this_run": round(seconds, 1),
               "measures": MEASURES, "rows": table.to_dict("records")}
    atomic_write_bytes(out / "sweep.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "sweep.json", json.dumps(summary, indent=1, default=float).encode())
    if report:
        from unlock_lens.sweep.report import write_sweep_report

        write_sweep_report(out / "report.html", table, summary)


# ---- the command --------------------------------------------------------------------------


def _split(text: str, cast: Callable[[str], Any], flag: str) -> tuple[Any, ...]:
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise UnlockLensError(f"--{flag} must be a comma-separated list, got {text!r}") from None


def register(app: Any) -> None:
    """Add ``sweep`` to the typer app of :mod:`unlock_lens.cli`."""
    @app.command()
    def sweep(
        source: Annotated[str, typer.Option(help="key's model: an organism or any model name")] = DEFAULT_SOURCE,
        target: Annotated[str, typer.Option(help="steered model")] = DEFAULT_TARGET,
        out: Annotated[Path, typer.Option(help="output folder (cells.jsonl, sweep.csv/json, report.html); "
                                      "a rerun with the same settings resumes")] = Path("out/sweep"),
        layers: Annotated[str, typer.Option(help="layer sets: all, single, loo, bands:W[:S], 3, 1-3, 0+2")] = "single,all",
        ranks: Annotated[str, typer.Option(help="map ranks, comma list")] = "16",
        alphas: Annotated[str, typer.Option(help="steering strengths, comma list")] = "0.1,0.25,0.5,1",
        methods: Annotated[str, typer.Option(help="alignment methods, comma list")] = "svd",
        kinds: Annotated[str, typer.Option(help="alignment data kinds: last, tokens, text, continuations, or +-joined (tokens+last)")] = "last",
        n_random: Annotated[int, typer.Option(help="random-mapped reference directions per cell")] = 10,
        n_key: Annotated[int, typer.Option(help="key questions (both keys; disjoint from align and eval)")] = 64,
        n_align: Annotated[int, typer.Option(help="alignment questions, disjoint from the key's")] = 256,
        n_eval: Annotated[int, typer.Option(help="prompts scored per configuration")] = 64,
        vocab_k: Annotated[int | None, typer.Option(help="KL / entropy over the reference's top-k union plus a rest "
                                                "bucket (faster; then not full-vocabulary KL)")] = None,
        fidelity_tokens: Annotated[int, typer.Option(help="also score the likelihood fidelity F of each cell on the "
                                                     "native key's greedy continuations of this many tokens, ranked "
                                                     "among the random-mapped directions (0: off)")] = 0,
        seed: Annotated[int, typer.Option(help="seed of the disjoint key / align / eval question splits")] = 0,
        device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N or mps")] = "cpu",
    ) -> None:
        """Layer sets x rank x alpha x method x data kind: first-token KL to the target's CoT
        prompt, entropy, p(its top token), top-1 agreement, against the native key and
        random-mapped directions; resumable; writes an HTML report."""
        grid = SweepGrid(_split(layers, str, "layers"), _split(ranks, int, "ranks"),
                         _split(alphas, float, "alphas"), _split(methods, str, "methods"),
                         _split(kinds, str, "kinds"), n_random)
        settings = SweepSettings(source, target, n_key, n_align, n_eval, seed, vocab_k=vocab_k, device=device,
                                 fidelity_tokens=fidelity_tokens)
        table = run_sweep(grid, settings, out)
        best = table.loc[table["key_kl"].idxmin()]
        typer.echo(f"{len(table)} cells -> {out}/sweep.csv, report {out}/report.html; lowest KL "
                   f"{best.key_kl:.3f} at {best.cell} (random-mapped {best.random_kl_mean:.3f}, "
                   f"native {best.native_kl:.3f})")
