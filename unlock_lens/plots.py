"""Plotly figure builders: each takes a tidy frame from ``unlock_lens.diagnostics`` and returns a
``go.Figure`` with a title, axis titles and a legend. The frame is the figure's data twin.

Every figure names and colours a reference condition the same way (:data:`CONDITIONS`: the
frames' ``condition`` keys ``direct``, ``cot``, ``key``, ``native``, ``random``) and an
alignment method the same way (:data:`METHODS`).

``save_figure(fig, path)`` always writes HTML and also PNG when static export works (plotly
>= 6 needs kaleido >= 1 *and* a Chrome/Chromium binary).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from unlock_lens.errors import UnlockLensError

PALETTE = qualitative.Plotly
Z95 = 1.959964
LOG2_TICKS = 0.30103  # dtick of a log axis with ticks at powers of 2

#: condition key -> (figure label, colour), the same in every figure
CONDITIONS: dict[str, tuple[str, str]] = {
    "direct": ("direct (unsteered)", "#222222"),
    "cot": ("CoT prompt", "#ff7f0e"),
    "key": ("transferred key", "#1f77b4"),
    "native": ("native key", "#2ca02c"),
    "random": ("random", "#7f7f7f"),
}

#: alignment method -> (colour, marker symbol)
METHODS: dict[str, tuple[str, str]] = {
    "svd": ("#1f77b4", "circle"),
    "procrustes": ("#d62728", "square"),
    "cca": ("#9467bd", "diamond"),
    "ridge": ("#8c564b", "x"),
    "identity": ("#e377c2", "cross"),
}

#: methods without a rank parameter (as ``unlock_lens.align.base._RANK_FREE``)
RANK_FREE = ("ridge", "identity")

METRIC_LABELS = {
    "kl": "KL(CoT prompt ‖ steered direct prompt) [nats]",
    "logp": "log p(CoT prompt's top-m first tokens)",
}

FIT_MEASURES = {
    "heldout_r2": "held-out R²",
    "heldout_relative_error": "held-out relative error ‖H_t − H_s W‖ / ‖H_t‖",
    "cosine": "cosine(transferred key, native key)",
}

_STAT_LABELS = {
    "entropy": "entropy [nats]",
    "ref_token_prob": "p(CoT prompt's first token)",
}


def condition_label(condition: str, n_seeds: int | None = None) -> str:
    """The figure label of a condition key (``"direct"`` -> ``"direct (unsteered)"``); random
    controls name their seed count (``"random (3 seeds)"``). Other names pass through."""
    label = CONDITIONS.get(condition, (condition, ""))[0]
    if condition == "random" and n_seeds:
        label += f" ({n_seeds} seed{'' if n_seeds == 1 else 's'})"
    return label


def condition_colour(condition: str, index: int = 0) -> str:
    """The colour of a condition key; other names take ``PALETTE[index]``."""
    if condition in CONDITIONS:
        return CONDITIONS[condition][1]
    return PALETTE[index % len(PALETTE)]


def method_style(method: str, index: int = 0) -> tuple[str, str]:
    """(colour, marker symbol) of an alignment method; others take ``PALETTE[index]``."""
    return METHODS.get(method, (PALETTE[index % len(PALETTE)], "circle"))


def stat_label(column: str) -> str:
    """Axis label of a ``first_token_stats`` column (``top5_mass`` -> ``top-5 mass``)."""
    match = re.fullmatch(r"top(\d+)_mass", column)
    return f"top-{match.group(1)} mass" if match else _STAT_LABELS.get(column, column)


def _need(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UnlockLensError(f"{what} needs columns {missing}; got {list(frame.columns)}")
    if frame.empty:
        raise UnlockLensError(f"{what}: the frame is empty")


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, showlegend=True,
                      template="plotly_white", legend_title_text="")
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _n_seeds(frame: pd.DataFrame) -> int | None:
    """Seeds behind a frame's ``random`` rows (column ``n_seeds``), if recorded."""
    rnd = frame[frame.condition == "random"]
    if "n_seeds" not in rnd.columns or rnd["n_seeds"].dropna().empty:
        return None
    return int(rnd["n_seeds"].max())


def _random_band(x, mean, lo, hi, label: str) -> list[go.Scatter]:
    """The random controls as one legend entry: a grey band from ``lo`` to ``hi`` (upper edge
    out, lower edge back) and its dotted mean."""
    x, colour = list(x), CONDITIONS["random"][1]
    band = go.Scatter(
        x=x + x[::-1], y=list(hi) + list(lo)[::-1], mode="lines", fill="toself",
        fillcolor=_rgba(colour, 0.2), line={"width": 0}, hoverinfo="skip",
        name=f"{label}: mean ± std", legendgroup="random",
    )
    line = go.Scatter(x=x, y=list(mean), mode="lines", line={"color": colour, "dash": "dot"},
                      name=f"{label}: mean", legendgroup="random", showlegend=False)
    return [band, line]


def _flat_line(x_ends: Sequence[float], y: float, name: str, colour: str, dash: str,
               *, showlegend: bool = True) -> go.Scatter:
    """A horizontal reference line over ``x_ends`` (a trace, so it has a legend entry and
    works on log axes)."""
    return go.Scatter(x=list(x_ends), y=[y, y], mode="lines", name=name,
                      legendgroup=name, showlegend=showlegend,
                      line={"color": colour, "dash": dash},
                      hovertemplate=f"{name}: {y:.4g}<extra></extra>")


def log_ticks(values: Sequence[float]) -> list[float]:
    """Log-axis tick values covering the positive finite ``values``: 1-2-5 steps over at most
    three decades (plotly labels a short log axis at powers of 10 only), powers of 10 beyond."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0]
    if not v:
        return []
    lo, hi = min(v), max(v)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    steps = (1, 2, 5) if hi / lo <= 1e3 else (1,)
    return [m * 10.0**e for e in decades for m in steps if lo / 2 <= m * 10.0**e <= hi * 2]


def _x_ends(values: pd.Series) -> list[float]:
    lo, hi = float(values.min()), float(values.max())
    return [lo / 1.25, hi * 1.25] if lo == hi else [lo, hi]


def _reference_hline(fig: go.Figure, frame: pd.DataFrame, condition: str, metric: str,
                     dash: str) -> None:
    """Dashed line (with a legend entry) at a reference condition's value, if it has a row."""
    rows = frame[frame.condition == condition]
    if rows.empty:
        return
    label, colour = condition_label(condition), condition_colour(condition)
    fig.add_hline(y=float(rows[f"{metric}_mean"].iloc[0]), line_dash=dash, line_color=colour,
                  annotation_text=label)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label,
                             line={"color": colour, "dash": dash}))


def _sweep_figure(
    frame: pd.DataFrame, x: str, metric: str, title: str, x_title: str, log_x: bool = False
) -> go.Figure:
    """Key line with 95% CI error bars, random-control band (mean ± std over seeds), the
    unsteered baseline and, when the frame has ``native`` rows, the native key's level."""
    _need(frame, ["condition", x, f"{metric}_mean", f"{metric}_std", f"{metric}_sem"], title)
    fig = go.Figure()
    key = frame[frame.condition == "key"].sort_values(x)
    rnd = frame[frame.condition == "random"].sort_values(x)
    if len(rnd):
        mean, std = rnd[f"{metric}_mean"], rnd[f"{metric}_std"]
        fig.add_traces(_random_band(rnd[x], mean, mean - std, mean + std,
                                    condition_label("random", _n_seeds(frame))))
    fig.add_trace(go.Scatter(
        x=key[x], y=key[f"{metric}_mean"], mode="lines+markers", name=condition_label("key"),
        line={"color": condition_colour("key")},
        error_y={"type": "data", "array": Z95 * key[f"{metric}_sem"], "visible": True},
    ))
    _reference_hline(fig, frame, "direct", metric, "dash")
    _reference_hline(fig, frame, "native", metric, "dashdot")
    _layout(fig, title, x_title, METRIC_LABELS.get(metric, metric))
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def layer_sweep_figure(frame: pd.DataFrame, *, metric: str = "kl") -> go.Figure:
    """Single-layer / leave-one-out / band sweep: metric vs target layer.

    Error bars: 95% CI over questions; grey band: random-direction control mean ± std over
    seeds; dashed line: unsteered.
    """
    sweep = str(frame["sweep"].iloc[0]) if "sweep" in frame.columns and len(frame) else "layer"
    x_title = {"leave_one_out": "target layer left out", "band": "band centre (target layer)"}
    return _sweep_figure(frame, "layer", metric, f"Steering by layer ({sweep.replace('_', ' ')})",
                         x_title.get(sweep, "steered target layer"))


def alpha_sweep_figure(frame: pd.DataFrame, *, metric: str = "kl", log_x: bool = True) -> go.Figure:
    """Metric vs steering strength alpha (all layers steered)."""
    return _sweep_figure(frame, "alpha", metric, "Steering strength sweep", "alpha", log_x)


def _random_by_rank(rnd: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per rank over every map's random control: mean of the means, lowest mean − std,
    highest mean + std (columns ``rank, mean, lo, hi``)."""
    std = rnd[f"{metric}_std"] if f"{metric}_std" in rnd.columns else 0.0
    spread = rnd.assign(lo=rnd[f"{metric}_mean"] - std, hi=rnd[f"{metric}_mean"] + std)
    return (spread.groupby("rank").agg(mean=(f"{metric}_mean", "mean"), lo=("lo", "min"),
                                       hi=("hi", "max")).reset_index().sort_values("rank"))


def rank_sweep_figure(
    frame: pd.DataFrame, *, metric: str = "kl", show_random: bool = True, log_y: bool = False,
    rank_free: Sequence[str] = RANK_FREE,
) -> go.Figure:
    """Metric vs alignment rank k (``ablations.rank_sweep`` output).

    One line per rank-k method (95% CI error bars, its own colour and marker); a rank-free
    method (``ridge``) as one dashed horizontal line, not a line across ranks; the random
    controls of every map as one grey band (per rank, lowest mean − std to highest mean + std;
    under the default norm-preserving edit all maps' controls coincide); the unsteered target
    and, when the frame has ``native`` rows, the target's own key as horizontal lines.
    """
    _need(frame, ["condition", "method", "rank", f"{metric}_mean", f"{metric}_sem"], "rank sweep")
    key = frame[frame.condition == "key"]
    if key.empty:
        raise UnlockLensError("rank sweep: the frame has no 'key' rows")
    ranked = key[~key.method.isin(rank_free)]
    x_ends = _x_ends(ranked["rank"] if len(ranked) else key["rank"])
    fig = go.Figure()
    rnd = frame[frame.condition == "random"]
    if show_random and len(rnd):
        per_rank = _random_by_rank(rnd, metric)
        if len(per_rank) == 1:  # rank-free maps only: stretch the band over the axis
            per_rank = pd.concat([per_rank] * 2).assign(rank=x_ends)
        fig.add_traces(_random_band(per_rank["rank"], per_rank["mean"], per_rank["lo"],
                                    per_rank["hi"], condition_label("random", _n_seeds(frame))))
    for i, (method, part) in enumerate(key.groupby("method", sort=False)):
        colour, symbol = method_style(str(method), i)
        if method in rank_free:
            fig.add_trace(_flat_line(x_ends, float(part[f"{metric}_mean"].iloc[0]),
                                     f"{method} (no rank)", colour, "dash"))
            continue
        part = part.sort_values("rank")
        fig.add_trace(go.Scatter(
            x=part["rank"], y=part[f"{metric}_mean"], mode="lines+markers", name=str(method),
            legendgroup=str(method), line={"color": colour}, marker={"symbol": symbol, "size": 8},
            error_y={"type": "data", "array": Z95 * part[f"{metric}_sem"], "visible": True},
        ))
    for condition, dash in (("native", "dashdot"), ("direct", "dash")):
        rows = frame[frame.condition == condition]
        if len(rows):
            fig.add_trace(_flat_line(x_ends, float(rows[f"{metric}_mean"].iloc[0]),
                                     condition_label(condition), condition_colour(condition), dash))
    _layout(fig, "Alignment rank sweep", "rank k", METRIC_LABELS.get(metric, metric))
    fig.update_xaxes(type="log", dtick=LOG2_TICKS)
    if log_y:
        shown = [y for t in fig.data if t.y is not None for y in t.y]
        fig.update_yaxes(type="log", tickvals=log_ticks(shown))
    return fig


def rank_fit_figure(
    frame: pd.DataFrame, *, measures: Mapping[str, str] | None = None,
    rank_free: Sequence[str] = RANK_FREE, r2_floor: float = -1.0,
) -> go.Figure:
    """One panel per fit measure vs rank k, one line per method (means over the frame's rows
    of each method and rank, e.g. over target layers); a rank-free method as one dashed
    horizontal line. Default measures (those present): held-out R², held-out relative error,
    cosine to the native key. The R² axis stops at ``r2_floor`` (rank-1 maps score far below).
    """
    measures = {m: t for m, t in (measures or FIT_MEASURES).items() if m in frame.columns}
    if not measures:
        raise UnlockLensError(f"rank fit figure: none of {list(FIT_MEASURES)} in {list(frame.columns)}")
    _need(frame, ["method", "rank", *measures], "rank fit figure")
    means = frame.groupby(["method", "rank"], sort=False)[list(measures)].mean().reset_index()
    ranked = means[~means.method.isin(rank_free)]
    x_ends = _x_ends(ranked["rank"] if len(ranked) else means["rank"])
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=list(measures.values()),
                        horizontal_spacing=0.07)
    for col, measure in enumerate(measures, start=1):
        for i, (method, part) in enumerate(means.groupby("method", sort=False)):
            colour, symbol = method_style(str(method), i)
            if method in rank_free:
                trace = _flat_line(x_ends, float(part[measure].mean()), f"{method} (no rank)",
                                   colour, "dash", showlegend=col == 1)
            else:
                part = part.sort_values("rank")
                trace = go.Scatter(x=part["rank"], y=part[measure], mode="lines+markers",
                                   name=str(method), legendgroup=str(method), showlegend=col == 1,
                                   line={"color": colour}, marker={"symbol": symbol, "size": 7})
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(type="log", dtick=LOG2_TICKS, title_text="rank k", row=1, col=col)
    if "heldout_r2" in measures:
        lowest = float(means["heldout_r2"].min())
        fig.update_yaxes(range=[max(r2_floor, lowest - 0.05), 1.02],
                         col=list(measures).index("heldout_r2") + 1)
    fig.update_layout(title="Alignment fit and key fidelity vs rank (mean over target layers)",
                      template="plotly_white", showlegend=True, legend_title_text="method",
                      height=430)
    return fig


def _cka_grid(frame: pd.DataFrame) -> pd.DataFrame:
    grid = frame.pivot(index="source_layer", columns="target_layer", values="cka").sort_index()
    return grid[sorted(grid.columns)]


def cka_heatmap(frame: pd.DataFrame, *, title: str = "Linear CKA between layers") -> go.Figure:
    """Source layer (rows) x target layer (columns) heatmap of ``cka_matrix`` output."""
    _need(frame, ["source_layer", "target_layer", "cka"], "CKA heatmap")
    grid = _cka_grid(frame)
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=list(grid.columns), y=list(grid.index), zmin=0, zmax=1,
        colorscale="Viridis", colorbar={"title": "CKA"}, name="CKA",
        hovertemplate="source %{y} · target %{x}: %{z:.3f}<extra></extra>",
    ))
    return _layout(fig, title, "target layer", "source layer")


def cka_panels(frames: Mapping[str, pd.DataFrame], *, title: str = "Linear CKA between layers"
               ) -> go.Figure:
    """One CKA heatmap per prompt set (``{panel title: cka_matrix output}``), one colour scale
    from 0 to 1 and the values printed in the cells."""
    if not frames:
        raise UnlockLensError("CKA panels: no frames given")
    fig = make_subplots(rows=1, cols=len(frames), subplot_titles=list(frames),
                        horizontal_spacing=0.1)
    for col, (name, frame) in enumerate(frames.items(), start=1):
        _need(frame, ["source_layer", "target_layer", "cka"], f"CKA panel {name!r}")
        grid = _cka_grid(frame)
        fig.add_trace(go.Heatmap(
            z=grid.values, x=list(grid.columns), y=list(grid.index), coloraxis="coloraxis",
            name=name, texttemplate="%{z:.2f}",
            hovertemplate=f"{name}<br>source %{{y}} · target %{{x}}: %{{z:.3f}}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="target layer", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="source layer", dtick=1, row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", showlegend=False,
                      coloraxis={"cmin": 0, "cmax": 1, "colorscale": "Viridis",
                                 "colorbar": {"title": "CKA"}})
    return fig


def principal_angles_figure(frame: pd.DataFrame, *, degrees: bool = True) -> go.Figure:
    """Principal-angle spectra (angle vs index), one line per layer pair."""
    col = "angle_deg" if degrees else "angle"
    _need(frame, ["source_layer", "target_layer", "index", col], "principal angles figure")
    fig = go.Figure()
    for (s, t), part in frame.groupby(["source_layer", "target_layer"], sort=True):
        part = part.sort_values("index")
        fig.add_trace(go.Scatter(x=part["index"], y=part[col], mode="lines+markers",
                                 name=f"source {s} → target {t}"))
    return _layout(fig, "Principal angles: mapped source subspace vs target subspace",
                   "principal angle index", "angle [degrees]" if degrees else "angle [radians]")


def word_bars_figure(
    frame: pd.DataFrame, *, top: int = 10, unit: str = "word", n_seeds: int | None = None
) -> go.Figure:
    """First / second generated word (or token: ``unit``) frequencies, grouped bars per
    condition, one panel per position (``word_frequencies`` output)."""
    _need(frame, ["condition", "position", "word", "fraction"], "word bars")
    positions = sorted(frame.position.unique())
    ordinal = {1: "first", 2: "second", 3: "third"}
    fig = make_subplots(rows=len(positions), cols=1, vertical_spacing=0.15, subplot_titles=[
        f"{ordinal.get(p, f'#{p}')} generated {unit}" for p in positions])
    conditions = list(dict.fromkeys(frame.condition))
    for row, pos in enumerate(positions, start=1):
        part = frame[frame.position == pos]
        order = (part.groupby("word")["fraction"].max().sort_values(ascending=False)
                 .index[:top].tolist())
        for i, cond in enumerate(conditions):
            sub = part[(part.condition == cond)].set_index("word").reindex(order)
            fig.add_trace(go.Bar(x=order, y=sub["fraction"].fillna(0.0),
                                 name=condition_label(str(cond), n_seeds),
                                 marker_color=condition_colour(str(cond), i),
                                 legendgroup=str(cond), showlegend=row == 1), row=row, col=1)
        fig.update_yaxes(title_text="fraction of outputs", row=row, col=1)
        fig.update_xaxes(title_text=unit, row=row, col=1)
    fig.update_layout(title=f"Generated {unit} frequencies by condition", barmode="group",
                      showlegend=True, template="plotly_white", legend_title_text="condition")
    return fig


def sharpening_figure(
    stats: pd.DataFrame, *, columns: Sequence[str] = ("entropy", "top1_mass"),
    log_entropy: bool = True, floor: float = 1e-6, n_seeds: int | None = None,
) -> go.Figure:
    """First-token sharpening as distributions over prompts (``first_token_stats`` output):
    one panel per column, one box with every prompt's point per condition.

    Entropy is drawn on a log axis (values below ``floor`` at ``floor``), where a CoT prompt
    or a steered target that commits to its first token shows as a shift by decades.
    """
    _need(stats, ["condition", *columns], "sharpening figure")
    conditions = list(dict.fromkeys(stats.condition))
    fig = make_subplots(rows=1, cols=len(columns), horizontal_spacing=0.08,
                        subplot_titles=[stat_label(c) for c in columns])
    for col, column in enumerate(columns, start=1):
        log = log_entropy and column == "entropy"
        for i, cond in enumerate(conditions):
            values = stats.loc[stats.condition == cond, column].astype(float)
            colour = condition_colour(str(cond), i)
            fig.add_trace(go.Box(
                y=values.clip(lower=floor) if log else values,
                name=condition_label(str(cond), n_seeds), legendgroup=str(cond),
                showlegend=col == 1, boxpoints="all", jitter=0.5, pointpos=0,
                marker={"color": colour, "size": 4}, line={"color": colour},
            ), row=1, col=col)
        if log:
            fig.update_yaxes(title_text=f"{stat_label(column)} (log; < {floor:.0e} at {floor:.0e})",
                             type="log", dtick=1, exponentformat="power", row=1, col=col)
        else:
            fig.update_yaxes(title_text=stat_label(column), row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    fig.update_layout(title="First-token distribution by condition (one point per prompt)",
                      template="plotly_white", showlegend=True, legend_title_text="condition",
                      height=450)
    return fig


def histogram_figure(
    frame: pd.DataFrame, column: str, *, by: str = "condition", title: str | None = None,
    x_title: str | None = None, nbins: int = 30,
) -> go.Figure:
    """Overlaid histograms of ``column`` per ``by`` group (conditions by their labels)."""
    _need(frame, [column, by], "histogram")
    fig = go.Figure()
    for i, (name, part) in enumerate(frame.groupby(by, sort=False)):
        label, colour = str(name), PALETTE[i % len(PALETTE)]
        if by == "condition":
            label, colour = condition_label(str(name)), condition_colour(str(name), i)
        fig.add_trace(go.Histogram(x=part[column], name=label, nbinsx=nbins, opacity=0.6,
                                   marker_color=colour))
    fig.update_layout(barmode="overlay")
    return _layout(fig, title or f"{column} by {by}", x_title or column, "count")


def entropy_histogram(frame: pd.DataFrame) -> go.Figure:
    """First-token entropy per condition (``first_token_stats`` output)."""
    return histogram_figure(frame, "entropy", title="First-token entropy by condition",
                            x_title="entropy [nats]")


def length_histogram(frame: pd.DataFrame, *, column: str = "n_words") -> go.Figure:
    """Output length per condition (``generation_stats`` output; ``n_words`` or ``n_tokens``)."""
    return histogram_figure(frame, column, title="Output length by condition",
                            x_title=column.replace("n_", "number of ").replace("_", " "))


#: alignment data kind -> colour (``AlignSpec.data``), the same in every figure
DATA_KINDS: dict[str, str] = {
    "last": "#7f7f7f",
    "tokens": "#17becf",
    "text": "#bcbd22",
    "tokens+last": "#1f77b4",
    "continuations": "#d62728",
    "continuations+last": "#ff7f0e",
}


def cosine_by_layer_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Per target layer, the cosine of the mapped key to the target's native key: one line per
    alignment data kind (``kind``), one panel per ``direction``, each panel on its own layer axis.

    Columns: ``direction``, ``kind``, ``target_layer``, ``cosine_to_native``; an optional
    ``setting`` (e.g. ``"svd k=256"``) is named on hover. Zero is drawn dotted: below it
    the mapped key pushes against the native one.
    """
    _need(frame, ["direction", "kind", "target_layer", "cosine_to_native"], "cosine_by_layer_figure")
    directions = list(dict.fromkeys(frame["direction"]))
    fig = make_subplots(rows=1, cols=len(directions), subplot_titles=directions, shared_yaxes=True)
    kinds = [k for k in DATA_KINDS if k in set(frame["kind"])] + sorted(set(frame["kind"]) - set(DATA_KINDS))
    shown: set[str] = set()
    for col, direction in enumerate(directions, start=1):
        for i, kind in enumerate(kinds):
            rows = frame[(frame["direction"] == direction) & (frame["kind"] == kind)].sort_values("target_layer")
            if rows.empty:
                continue
            setting = f" ({rows['setting'].iloc[0]})" if "setting" in rows else ""
            fig.add_trace(go.Scatter(
                x=rows["target_layer"], y=rows["cosine_to_native"], mode="lines+markers", name=kind,
                legendgroup=kind, showlegend=col == 1 or kind not in shown,
                line={"color": DATA_KINDS.get(kind, PALETTE[i % len(PALETTE)])},
                hovertemplate=f"{kind}{setting}<br>layer %{{x}}: cos %{{y:.2f}}<extra>{direction}</extra>",
            ), row=1, col=col)
            shown.add(kind)
        fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=col)
        fig.update_xaxes(title_text="target layer", row=1, col=col)
    fig.update_yaxes(title_text="cosine to native key", row=1, col=1)
    fig.update_layout(template="plotly_white", legend_title_text="alignment data",
                      title=title or "Mapped key vs the target's native key, per target layer")
    return fig


def save_figure(
    fig: go.Figure, path: str | Path, *, png: bool | None = None,
    include_plotlyjs: bool | str = True,
) -> list[Path]:
    """Write ``path`` with suffix ``.html`` (always) and ``.png`` (when static export works).

    ``png=None`` tries PNG and warns if it cannot be written; ``True`` raises instead;
    ``False`` skips it. The HTML embeds plotly.js (works offline) unless ``include_plotlyjs``
    says otherwise (``"cdn"``: small file, needs network to view). Returns the paths written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=include_plotlyjs)
    written = [html]
    if png is False:
        return written
    target = path.with_suffix(".png")
    try:
        fig.write_image(target)
        written.append(target)
    except Exception as err:  # kaleido missing, or no Chrome for kaleido >= 1
        if png:
            raise UnlockLensError(f"PNG export failed ({err}); install kaleido and Chrome") from err
        warnings.warn(f"PNG export unavailable, wrote HTML only: {str(err).strip()[:200]}",
                      stacklevel=2)
    return written


def accuracy_figure(frame: pd.DataFrame, *, title: str = "Accuracy by condition (Wilson 95% CI)"
                    ) -> go.Figure:
    """Bars of ``accuracy`` per condition with its interval (``ci_lo`` / ``ci_hi``): the
    transferred key in blue, random controls grey, the rest light (columns ``condition``,
    ``model``, ``accuracy``, ``ci_lo``, ``ci_hi``)."""
    _need(frame, ["condition", "model", "accuracy", "ci_lo", "ci_hi"], "accuracy_figure")
    labels = [f"{c} [{m}]" for c, m in zip(frame["condition"], frame["model"], strict=True)]
    fig = go.Figure(go.Bar(
        x=labels, y=frame["accuracy"],
        error_y={"type": "data", "symmetric": False, "array": frame["ci_hi"] - frame["accuracy"],
                 "arrayminus": frame["accuracy"] - frame["ci_lo"]},
        marker_color=["#888" if "random" in c else "#36c" if "UNLOCK" in c else "#9ab"
                      for c in frame["condition"]],
    ))
    fig.update_layout(title=title, yaxis={"title": "exact-answer accuracy", "range": [0, 1]},
                      xaxis={"tickangle": -30}, height=520)
    return fig


def write_report(path: str | Path, title: str, figures: Sequence[go.Figure], table: pd.DataFrame,
                 meta: str = "") -> Path:
    """One self-contained HTML page: title, a line of settings, the figures, the table.

    plotly.js is embedded once, so the page works offline. Written atomically.
    """
    from unlock_lens.artifacts import atomic_write_bytes

    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    html = (
        f"<html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h2>{title}</h2><p>{meta}</p>{''.join(parts)}"
        f"{table.to_html(index=False, float_format=lambda x: f'{x:.3f}')}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, html.encode())
    return path
