"""``unlock-lens transfer-report`` and the API under it: every behaviour axis, both directions of a
model pair, measured by :mod:`unlock_lens.diagnostics.axes_transfer`, resumable axis by axis.

Each finished (direction, axis) record is appended to ``axes.jsonl`` in the output folder (one
line, flushed and synced), so a run stopped at any point resumes where it stopped with the same
settings; other settings in the same folder are refused. At the end: ``report.json`` (settings,
records, median F per direction and data kind), ``report.csv`` (one row per direction x axis x
data kind) and ``report.html`` (:mod:`~unlock_lens.axes_report.report`).

Requests come from the axes' neutral pool (:func:`unlock_lens.axes.neutral_requests`): keys on
``key``, maps on ``align``, measurements on ``eval``; alpha is fixed for the run (the library
protocol's unless given) or chosen per axis on ``dev`` (``dev_alphas``), never on ``eval``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from unlock_lens.axes import Axis, load_axes, neutral_requests
from unlock_lens.diagnostics.axes_transfer import (
    TransferDirection,
    TransferSizes,
    axis_keys,
    flat_rows,
    measure_axis,
    median_fidelity,
    pool_requests,
    prepare_direction,
    split_contrasts,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.protocol import get_protocol
from unlock_lens.resumable import append_row, open_run, settings_record

#: alignment data kinds measured by default: the library's default and the other axes' keys (each
#: axis left out of its own map's fit). The authors' ``last`` on request (``kinds=(..., "last")``):
#: on the real pair's 14 axes it carried no more than ``tokens+last`` (analysis/results/axes.md)
#: and a third kind costs a third more scoring, which kept the default run over 20 minutes
DEFAULT_KINDS: tuple[str, ...] = ("tokens+last", "contrasts")
#: ``--quick``: sizes for tiny models or a smoke test (seconds per axis, not a result)
QUICK_SIZES = TransferSizes(n_key=8, n_align=16, n_eval=4, n_nulls=5, n_random=9, max_new_tokens=8,
                            fidelity_tokens=4)
SPLITS = ("key", "align", "eval")


@dataclass(frozen=True)
class ReportSettings:
    """Everything that decides a transfer report's numbers (recorded; a resume must match).
    ``axes``: names in the registry (empty: all); ``alpha``: None = the library protocol's;
    ``dev_alphas``: choose each axis's alpha among these on the pool's ``dev`` requests instead
    (``n_eval`` of them), by the native key's behaviour effect."""

    source: str
    target: str
    axes: tuple[str, ...] = ()
    kinds: tuple[str, ...] = DEFAULT_KINDS
    sizes: TransferSizes = field(default_factory=TransferSizes)
    alpha: float | None = None
    device: str = "cpu"
    dev_alphas: tuple[float, ...] = ()

    @property
    def steering_alpha(self) -> float:
        return get_protocol("library").alpha if self.alpha is None else float(self.alpha)

    @property
    def directions(self) -> list[tuple[str, str]]:
        return [(self.source, self.target), (self.target, self.source)]


def check_settings(settings: ReportSettings) -> list[Axis]:
    """The axes to measure, after refusing settings that cannot run (one line naming the flag;
    no model loads)."""
    registry = load_axes()
    unknown = [a for a in settings.axes if a not in registry]
    if unknown:
        raise UnlockLensError(f"--axes {','.join(unknown)}: not in the axis registry; choose from "
                              f"{', '.join(registry)}")
    if len(set(settings.axes)) != len(settings.axes):
        raise UnlockLensError(f"--axes {','.join(settings.axes)} names an axis twice; list each once")
    if not settings.kinds:
        raise UnlockLensError("--kinds is empty: give at least one alignment data kind, e.g. tokens+last")
    for kind in settings.kinds:
        try:
            _, contrasts = split_contrasts(kind)
        except UnlockLensError as err:
            raise UnlockLensError(f"--kinds {kind!r}: {err}") from None
        n_axes = len(settings.axes) or len(registry)
        if contrasts and n_axes < 3:
            raise UnlockLensError(f"--kinds {kind!r} fits each axis's maps on the other axes' keys: run at "
                                  f"least 3 axes (--axes names {n_axes})")
    if settings.source == settings.target:
        raise UnlockLensError(f"--source and --target are both {settings.source}: a transfer needs two models")
    if settings.alpha is not None and not math.isfinite(settings.alpha):
        raise UnlockLensError(f"--alpha must be a finite number, got {settings.alpha}")
    if settings.dev_alphas and settings.alpha is not None:
        raise UnlockLensError("--alpha and --dev-alphas both given: fix one alpha, or let dev choose among several")
    if not all(math.isfinite(a) for a in settings.dev_alphas):
        raise UnlockLensError(f"--dev-alphas {list(settings.dev_alphas)}: every alpha must be a finite number")
    settings.sizes.check({split: len(neutral_requests(split)) for split in SPLITS})
    if settings.dev_alphas and settings.sizes.n_eval > len(neutral_requests("dev")):
        raise UnlockLensError(f"--n-eval {settings.sizes.n_eval} is more than the {len(neutral_requests('dev'))} "
                              "requests of the pool's 'dev' split, which --dev-alphas chooses on; lower it")
    return [registry[a] for a in settings.axes] if settings.axes else list(registry.values())


def direction_label(source: str, target: str) -> str:
    return f"{Path(source).name} -> {Path(target).name}"


def _load_models(settings: ReportSettings, loader: Callable[[str], Any] | None) -> dict[str, Any]:
    if loader is None:
        from unlock_lens.models import load_model

        def loader(name: str) -> Any:
            return load_model(name, device=settings.device)

    return {name: loader(name) for name in (settings.source, settings.target)}


class _Directions:
    """Keys per model and each direction's set-up, made on first use (a resume that only lacks
    one direction fits only its maps)."""

    def __init__(self, settings: ReportSettings, models: Mapping[str, Any], axes: Sequence[Axis],
                 progress: bool) -> None:
        self.settings, self.models, self.axes, self.progress = settings, models, list(axes), progress
        self._keys: dict[str, Any] = {}
        self._directions: dict[tuple[str, str], TransferDirection] = {}

    def keys(self, name: str) -> Any:
        if name not in self._keys:
            sizes = self.settings.sizes
            self._keys[name] = axis_keys(self.models[name], self.axes, pool_requests(sizes)["key"],
                                         batch_size=sizes.batch_size, progress=self.progress)
        return self._keys[name]

    def __call__(self, source: str, target: str) -> TransferDirection:
        if (source, target) not in self._directions:
            s = self.settings
            self._directions[source, target] = prepare_direction(
                self.models[source], self.models[target], self.axes, alpha=s.steering_alpha, sizes=s.sizes,
                kinds=s.kinds, source_keys=self.keys(source), target_keys=self.keys(target),
                dev_alphas=s.dev_alphas, progress=self.progress)
        return self._directions[source, target]


def run_transfer_report(settings: ReportSettings, out: str | Path, *, models: Mapping[str, Any] | None = None,
                        loader: Callable[[str], Any] | None = None, progress: bool = True,
                        report: bool = True) -> pd.DataFrame:
    """Run (or resume) the report into ``out``; returns the table (one row per direction x axis
    x data kind). Settings are checked before any model loads, and models load only when an
    axis is left to measure: ``models`` (name -> model already loaded) or ``loader`` (name ->
    model; default :func:`unlock_lens.models.load_model` on the settings' device)."""
    out = Path(out)
    axes = check_settings(settings)
    alpha_from = ("chosen per axis on dev requests among " + ", ".join(f"{a:g}" for a in settings.dev_alphas)
                  if settings.dev_alphas else "--alpha" if settings.alpha is not None else "library protocol default")
    record = settings_record(settings=asdict(settings), alpha=settings.steering_alpha, alpha_from=alpha_from)
    done = {(r["direction"], r["axis"]): r
            for r in open_run(out, record, meta="transfer_meta.json", rows="axes.jsonl", what="a transfer report")}
    units = [(pair, axis) for pair in settings.directions for axis in axes]
    todo = [(pair, axis) for pair, axis in units if (direction_label(*pair), axis.name) not in done]
    t0 = time.perf_counter()
    if todo:
        directions = _Directions(settings, models or _load_models(settings, loader), axes, progress)
        with tqdm(total=len(units), initial=len(units) - len(todo), desc="axes x directions", unit="axis",
                  disable=not progress) as bar:
            for (source, target), axis in todo:
                label = direction_label(source, target)
                bar.set_postfix_str(f"{label}: {axis.name}")
                row = {"direction": label, "source": source, "target": target,
                       **measure_axis(directions(source, target), axis)}
                append_row(out / "axes.jsonl", row)
                done[label, axis.name] = row
                bar.update()
    records = [done[direction_label(*pair), axis.name] for pair, axis in units]
    return finish_report(out, records, record, time.perf_counter() - t0, report)


def medians(records: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Median F over the axes with a native effect, per direction and data kind."""
    rows = []
    for label in dict.fromkeys(r["direction"] for r in records):
        mine = [r for r in records if r["direction"] == label]
        for kind in kinds:
            median, n = median_fidelity(mine, kind)
            rows.append({"direction": label, "kind": kind, "median_F": median, "axes_with_native_effect": n,
                         "axes": len(mine)})
    return rows


def finish_report(out: Path, records: Sequence[Mapping[str, Any]], record: Mapping[str, Any], seconds: float,
                  report: bool = True) -> pd.DataFrame:
    """``report.csv``, ``report.json`` and (``report``) ``report.html`` from the records."""
    import json

    from unlock_lens.artifacts import atomic_write_bytes

    table = pd.DataFrame([row for r in records for row in flat_rows(r)])
    summary = {**record, "seconds_this_run": round(seconds, 1), "medians": medians(records, record["settings"]["kinds"]),
               "records": list(records)}
    atomic_write_bytes(out / "report.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=1, default=float).encode())
    if report:
        from unlock_lens.axes_report.report import write_transfer_report

        write_transfer_report(out / "report.html", table, summary)
    return table
