"""Figures and the HTML report of a sweep (:mod:`unlock_lens.sweep.run`).

:func:`sweep_heatmap` draws one measure over two grid axes (``layer_set`` x ``alpha`` or
``rank`` x ``alpha``, the other axes held at one value) as three panels on one colour scale:
the transferred key, the mean of the random-mapped directions, and the native key; a star
marks each key cell whose KL is below every random-mapped direction's (mean over prompts), and the unsteered
prompt's value is written in the title (the references drawn on the map).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unlock_lens.diagnostics.restricted_vocab import MEASURES
from unlock_lens.errors import UnlockLensError

AXIS_TITLES = {"layer_set": "steered target layers", "rank": "map rank k", "alpha": "alpha",
               "method": "alignment method", "kind": "alignment data"}
#: colour scales: low KL / entropy is close to the CoT prompt, high p / agreement is
COLOURS = {"kl": "Viridis_r", "entropy": "Cividis_r", "p_ref_top": "Viridis", "top1_agree": "Viridis"}


def measure_label(measure: str, vocab_k: int | None = None) -> str:
    """Axis / colour-bar label of a measure; a restricted-vocabulary KL or entropy says so."""
    label = MEASURES.get(measure, measure).replace("reference", "CoT prompt").replace("configuration", "steered")
    if vocab_k is not None and measure in ("kl", "entropy"):
        label += f" (top-{vocab_k} union + rest bucket, not full vocabulary)"
    return label


def _slice(table: pd.DataFrame, rows: str, fixed: Mapping[str, Any]) -> pd.DataFrame:
    part = table
    for col, value in fixed.items():
        part = part[part[col] == value]
    if part.empty:
        raise UnlockLensError(f"sweep heatmap: no cells at {dict(fixed)}")
    return part


def sweep_heatmap(table: pd.DataFrame, rows: str, *, measure: str = "kl", fixed: Mapping[str, Any] | None = None,
                  direct: Mapping[str, float] | None = None, vocab_k: int | None = None) -> go.Figure:
    """``rows`` (``layer_set`` or ``rank``) x alpha heatmaps of ``measure``: key | random-mapped
    mean | native key. ``fixed``: the value of every other grid axis (default: each one's first)."""
    if rows not in ("layer_set", "rank"):
        raise UnlockLensError(f"sweep heatmap rows must be layer_set or rank, got {rows!r}")
    axes = [c for c in ("layer_set", "kind", "method", "rank") if c != rows]
    fixed = {c: table[c].iloc[0] for c in axes} | dict(fixed or {})
    part = _slice(table, rows, fixed)
    order = list(dict.fromkeys(part[rows]))
    alphas = sorted(part["alpha"].unique())
    panels = {"transferred key": f"key_{measure}", "random-mapped (mean)": f"random_{measure}_mean",
              "native key": f"native_{measure}"}
    grids = {name: part.pivot_table(index=rows, columns="alpha", values=col, sort=False).reindex(order)[alphas]
             for name, col in panels.items()}
    lo = min(float(g.min().min()) for g in grids.values())
    hi = max(float(g.max().max()) for g in grids.values())
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(grids), shared_yaxes=True, horizontal_spacing=0.04)
    y = [str(v) for v in order]
    x = [f"{a:g}" for a in alphas]
    stars = (part.pivot_table(index=rows, columns="alpha", values="key_below_all_random", sort=False,
                              aggfunc="max").reindex(order)[alphas].astype(bool).values
             if measure == "kl" else None)
    for col, (name, grid) in enumerate(grids.items(), start=1):
        text = [[f"{v:.2f}" + (" ★" if col == 1 and stars is not None and stars[i][j] else "")
                 for j, v in enumerate(row)] for i, row in enumerate(grid.values)]
        fig.add_trace(go.Heatmap(
            z=grid.values, x=x, y=y, text=text, texttemplate="%{text}", coloraxis="coloraxis", name=name,
            hovertemplate=f"{name}<br>{rows} %{{y}} · alpha %{{x}}: %{{z:.4f}}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="alpha", type="category", row=1, col=col)
    fig.update_yaxes(title_text=AXIS_TITLES[rows], type="category", autorange="reversed", row=1, col=1)
    at = ", ".join(f"{AXIS_TITLES[c]} {v}" for c, v in fixed.items())
    base = f"; unsteered direct prompt: {direct[measure]:.3f}" if direct and measure in direct else ""
    if stars is not None:
        base += "; ★ key below every random-mapped direction"
    fig.update_layout(
        title=f"{measure_label(measure, vocab_k)} by {AXIS_TITLES[rows]} x alpha<br><sup>{at}{base}</sup>",
        template="plotly_white", height=max(380, 60 + 34 * len(order)),
        coloraxis={"colorscale": COLOURS.get(measure, "Viridis"), "cmin": lo, "cmax": hi,
                   "colorbar": {"title": measure}},
    )
    return fig


def report_figures(table: pd.DataFrame, summary: Mapping[str, Any]) -> list[go.Figure]:
    """Layer x alpha and rank x alpha heatmaps of KL (and p of the CoT prompt's top token) per
    method and data kind: layers at the first rank listed, ranks at ``all`` layers (or the
    first layer set)."""
    direct = summary.get("direct") or {}
    vocab_k = summary.get("settings", {}).get("vocab_k")
    figures = []
    layer_for_ranks = "all" if "all" in set(table["layer_set"]) else table["layer_set"].iloc[0]
    for _, part in table.groupby(["kind", "method"], sort=False):
        for measure in ("kl", "p_ref_top"):
            if part["layer_set"].nunique() > 1:
                figures.append(sweep_heatmap(part, "layer_set", measure=measure, direct=direct, vocab_k=vocab_k,
                                             fixed={"rank": part["rank"].iloc[0]}))
            if part["rank"].nunique() > 1:
                figures.append(sweep_heatmap(part, "rank", measure=measure, direct=direct, vocab_k=vocab_k,
                                             fixed={"layer_set": layer_for_ranks}))
    if not figures:  # one layer set and one rank: still show the alpha row
        figures.append(sweep_heatmap(table, "layer_set", direct=direct, vocab_k=vocab_k))
    return figures


TABLE_COLUMNS = ("cell", "key_kl", "random_kl_mean", "random_kl_min", "native_kl", "key_below_all_random",
                 "key_entropy", "key_p_ref_top", "random_p_ref_top_mean", "native_p_ref_top", "key_top1_agree")


def write_sweep_report(path: str | Path, table: pd.DataFrame, summary: Mapping[str, Any]) -> Path:
    """The HTML report (plotly embedded once, works offline) beside ``sweep.csv`` / ``sweep.json``."""
    from unlock_lens.plots import write_report

    s, g = summary["settings"], summary["grid"]
    kl = "full-vocabulary KL" if s.get("vocab_k") is None else f"KL over the top-{s['vocab_k']} union + rest"
    meta = (f"{s['source']} → {s['target']}; {s['n_eval']} prompts per configuration, key on {s['n_key']}, "
            f"maps on {s['n_align']} questions; {g['n_random']} random-mapped directions per cell; {kl}; "
            f"unsteered: " + ", ".join(f"{m} {v:.3f}" for m, v in (summary.get("direct") or {}).items())
            + ". Stars: the key's KL is below every random-mapped direction's.")
    shown = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    return write_report(path, f"Sweep: {s['source']} → {s['target']}", report_figures(table, summary), shown, meta)
