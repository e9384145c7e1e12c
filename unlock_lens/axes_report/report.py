"""Figures and the HTML page of a transfer report (:mod:`unlock_lens.axes_report.run`).

- :func:`fidelity_figure`: F per axis (a marker per data kind, its bootstrap interval as error
  bars) over the random-mapped nulls' band (median to 95th percentile, first data kind), one
  panel per direction; axes whose native key has no effect are greyed and named so;
- :func:`behaviour_figure`: per axis, the behaviour effect (score minus unsteered) of the
  native key, the transferred key (first data kind), the unlocked prompt and a random-mapped
  control, with the random target directions' largest effect as a tick;
- :func:`examples_figure`: one request per axis and its unsteered / native / transferred /
  prompted outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unlock_lens.plots import CONDITIONS, PALETTE

#: the null band: the random condition's grey, translucent
NULL_BAND = "rgba(127,127,127,0.3)"

NO_EFFECT = " (no native effect)"


def _axis_labels(part: pd.DataFrame) -> list[str]:
    return [a + ("" if has else NO_EFFECT) for a, has in zip(part["axis"], part["native_has_effect"], strict=True)]


def fidelity_figure(table: pd.DataFrame) -> go.Figure:
    """F [bootstrap CI] per axis and data kind, over the null band, one panel per direction."""
    directions = list(dict.fromkeys(table["direction"]))
    kinds = list(dict.fromkeys(table["kind"]))
    fig = make_subplots(rows=len(directions), cols=1, subplot_titles=directions, vertical_spacing=0.12)
    for row, label in enumerate(directions, start=1):
        mine = table[table["direction"] == label]
        first = mine[mine["kind"] == kinds[0]]
        x = _axis_labels(first)
        fig.add_trace(go.Bar(x=x, y=first["null_q95"] - first["null_q50"], base=first["null_q50"],
                             marker_color=NULL_BAND, name=f"random-mapped nulls, "
                             f"median to q0.95 ({kinds[0]})", showlegend=row == 1, legendgroup="nulls",
                             hovertemplate="%{x}: nulls q0.5 %{base:.2f}, q0.95 %{y:.2f} above<extra></extra>"),
                      row=row, col=1)
        for k, kind in enumerate(kinds):
            part = mine[mine["kind"] == kind]
            colours = [PALETTE[k % len(PALETTE)] if has else "#bbbbbb" for has in part["native_has_effect"]]
            fig.add_trace(go.Scatter(
                x=_axis_labels(part), y=part["F"], mode="markers", name=f"F, {kind}", legendgroup=kind,
                showlegend=row == 1, marker={"color": colours, "size": 10, "symbol": k},
                error_y={"type": "data", "symmetric": False, "array": part["F_hi"] - part["F"],
                         "arrayminus": part["F"] - part["F_lo"], "color": PALETTE[k % len(PALETTE)]},
                customdata=part[["p", "rank", "n_nulls"]].values,
                hovertemplate="%{x}: F %{y:.2f}, p %{customdata[0]:.3f} (rank %{customdata[1]} "
                              "among %{customdata[2]} nulls)<extra>" + kind + "</extra>"), row=row, col=1)
        fig.add_hline(y=1, line_dash="dot", line_color=CONDITIONS["native"][1], row=row, col=1)
        fig.add_hline(y=0, line_dash="dot", line_color=CONDITIONS["direct"][1], row=row, col=1)
        fig.update_yaxes(title_text="fidelity F", row=row, col=1)
    fig.update_layout(title="Likelihood fidelity F of the transferred key per axis (1: the native key's "
                            "effect, 0: unsteered)", template="plotly_white", height=420 * len(directions))
    return fig


BEHAVIOUR_BARS = {"native_effect": ("native key", CONDITIONS["native"][1]),
                  "effect": ("transferred key", CONDITIONS["key"][1]),
                  "prompt_effect": ("unlocked prompt", CONDITIONS["cot"][1]),
                  "random_mapped_effect": ("random-mapped control", CONDITIONS["random"][1])}


def behaviour_figure(table: pd.DataFrame) -> go.Figure:
    """Behaviour effect per axis: native vs transferred (first data kind) vs prompt vs control."""
    directions = list(dict.fromkeys(table["direction"]))
    kind = table["kind"].iloc[0]
    fig = make_subplots(rows=len(directions), cols=1, subplot_titles=directions, vertical_spacing=0.12)
    for row, label in enumerate(directions, start=1):
        part = table[(table["direction"] == label) & (table["kind"] == kind)]
        x = _axis_labels(part)
        for column, (name, colour) in BEHAVIOUR_BARS.items():
            fig.add_trace(go.Bar(x=x, y=part[column], name=name, marker_color=colour, legendgroup=name,
                                 showlegend=row == 1), row=row, col=1)
        fig.add_trace(go.Scatter(x=x, y=part["native_random_effect_max"], mode="markers", legendgroup="rt",
                                 name="random target directions, largest effect", showlegend=row == 1,
                                 marker={"symbol": "line-ew-open", "size": 22, "color": "#000000"}), row=row, col=1)
        fig.update_yaxes(title_text="behaviour score − unsteered", row=row, col=1)
    fig.update_layout(barmode="group", template="plotly_white", height=420 * len(directions),
                      title=f"Behaviour effect per axis (transferred key through {kind} maps)")
    return fig


def examples_figure(records: Sequence[Mapping[str, Any]]) -> go.Figure:
    """One request per axis and direction with every condition's output, as a table."""
    columns = ["direction", "axis", "request", "unsteered", "native", "transferred", "prompted"]
    rows = []
    for r in records:
        ex = r["example"]
        transferred = next((v for k, v in ex.items() if k.startswith("transferred")), "")
        rows.append([r["direction"], r["axis"], ex["request"], ex["unsteered"], ex["native"], transferred,
                     ex["prompted"]])
    cells = list(map(list, zip(*rows, strict=True))) if rows else [[] for _ in columns]
    fig = go.Figure(go.Table(header={"values": columns, "align": "left"},
                             cells={"values": cells, "align": "left"},
                             columnwidth=[1.2, 0.8, 2, 3, 3, 3, 3]))
    fig.update_layout(title="One evaluation request per axis: greedy outputs (transferred: first data kind)",
                      height=200 + 90 * len(rows))
    return fig


TABLE_COLUMNS = ("direction", "axis", "alpha", "kind", "native_effect", "native_p", "native_has_effect", "F", "F_lo", "F_hi",
                 "p", "share", "anti_steerable", "prompt_effect", "random_mapped_effect", "cosine_to_native")


def write_transfer_report(path: str | Path, table: pd.DataFrame, summary: Mapping[str, Any]) -> Path:
    """The HTML report (plotly embedded once, works offline) beside ``report.csv`` / ``report.json``."""
    from unlock_lens.plots import write_report

    s, sizes = summary["settings"], summary["settings"]["sizes"]
    medians = "; ".join(f"{m['direction']} {m['kind']}: median F {m['median_F']:.2f} over "
                        f"{m['axes_with_native_effect']} of {m['axes']} axes" for m in summary["medians"])
    alpha = (summary["alpha_from"] if s.get("dev_alphas") else f"alpha {summary['alpha']:g} ({summary['alpha_from']})")
    meta = (f"{s['source']} ⇄ {s['target']}; {alpha}; "
            f"{sizes['n_eval']} evaluation requests, keys on {sizes['n_key']}, maps on {sizes['n_align']} "
            f"trigger-free requests per data kind, fitted once per direction; {sizes['n_nulls']} random-mapped "
            f"nulls for F, {sizes['n_random']} random target directions for the native effect; "
            f"{sizes['max_new_tokens']} greedy tokens. Medians over axes with a native effect: {medians}.")
    legend = ("native_effect: mean behaviour score under the target's own key minus unsteered; native_p: its "
              "direction-level p among random target directions (no native effect: effect <= 0 or p > 0.1); "
              "F [F_lo, F_hi]: likelihood fidelity with its bootstrap interval over requests; p: among the "
              "random-mapped nulls; share: transferred effect / native effect; anti_steerable: share of "
              "requests whose score went down under the transferred key.")
    shown = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    figures = [fidelity_figure(table), behaviour_figure(table), examples_figure(summary["records"])]
    return write_report(path, f"Transfer across capability axes: {s['source']} ⇄ {s['target']}", figures, shown,
                        meta, legend)
