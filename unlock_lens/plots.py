"""Plotly figure builders: each takes a tidy frame from ``unlock_lens.diagnostics`` and returns a
``go.Figure`` with a title, axis titles and a legend. The frame is the figure's data twin.

``save_figure(fig, path)`` always writes HTML and also PNG when static export works (plotly
>= 6 needs kaleido >= 1 *and* a Chrome/Chromium binary).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from unlock_lens.errors import UnlockLensError

PALETTE = qualitative.Plotly
Z95 = 1.959964

_METRIC_LABELS = {
    "kl": "KL(CoT prompt || steered) [nats]",
    "logp": "log p(CoT top-m first tokens)",
}


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


def _band(fig: go.Figure, x, lo, hi, name: str, colour: str, group: str) -> None:
    """A filled band from ``lo`` to ``hi`` (one trace: upper edge out, lower edge back)."""
    x = list(x)
    fig.add_trace(go.Scatter(
        x=x + x[::-1], y=list(hi) + list(lo)[::-1], mode="lines", fill="toself", fillcolor=_rgba(colour, 0.2),
        line={"width": 0}, hoverinfo="skip", name=name, legendgroup=group,
    ))


def _sweep_figure(
    frame: pd.DataFrame, x: str, metric: str, title: str, x_title: str, log_x: bool = False
) -> go.Figure:
    """Key line with 95% CI error bars, random-control band (mean +- std), direct baseline."""
    _need(frame, ["condition", x, f"{metric}_mean", f"{metric}_std", f"{metric}_sem"], title)
    fig = go.Figure()
    key = frame[frame.condition == "key"].sort_values(x)
    rnd = frame[frame.condition == "random"].sort_values(x)
    if len(rnd):
        _band(fig, rnd[x], rnd[f"{metric}_mean"] - rnd[f"{metric}_std"],
              rnd[f"{metric}_mean"] + rnd[f"{metric}_std"], "random direction (mean ± std)",
              "#7f7f7f", "random")
        fig.add_trace(go.Scatter(x=rnd[x], y=rnd[f"{metric}_mean"], mode="lines",
                                 line={"color": "#7f7f7f", "dash": "dot"},
                                 name="random direction (mean)", legendgroup="random"))
    fig.add_trace(go.Scatter(
        x=key[x], y=key[f"{metric}_mean"], mode="lines+markers", name="transferred key",
        line={"color": PALETTE[0]},
        error_y={"type": "data", "array": Z95 * key[f"{metric}_sem"], "visible": True},
    ))
    direct = frame[frame.condition == "direct"]
    if len(direct):
        fig.add_hline(y=float(direct[f"{metric}_mean"].iloc[0]), line_dash="dash",
                      line_color="black", annotation_text="unsteered (direct prompt)")
        # a legend entry for the baseline (shapes have none)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="unsteered (direct prompt)",
                                 line={"color": "black", "dash": "dash"}))
    _layout(fig, title, x_title, _METRIC_LABELS.get(metric, metric))
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


def rank_sweep_figure(
    frame: pd.DataFrame, *, metric: str = "kl", show_random: bool = True
) -> go.Figure:
    """Metric vs alignment rank k, one line per method (dotted: its random control)."""
    _need(frame, ["condition", "method", "rank", f"{metric}_mean", f"{metric}_sem"], "rank sweep")
    fig = go.Figure()
    key = frame[frame.condition == "key"]
    for i, (method, part) in enumerate(key.groupby("method", sort=False)):
        part = part.sort_values("rank")
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(
            x=part["rank"], y=part[f"{metric}_mean"], mode="lines+markers", name=str(method),
            legendgroup=str(method), line={"color": colour},
            error_y={"type": "data", "array": Z95 * part[f"{metric}_sem"], "visible": True},
        ))
        rnd = frame[(frame.condition == "random") & (frame.method == method)].sort_values("rank")
        if show_random and len(rnd):
            fig.add_trace(go.Scatter(
                x=rnd["rank"], y=rnd[f"{metric}_mean"], mode="lines", legendgroup=str(method),
                name=f"{method}: random direction", line={"color": colour, "dash": "dot"},
            ))
    direct = frame[frame.condition == "direct"]
    if len(direct):
        fig.add_hline(y=float(direct[f"{metric}_mean"].iloc[0]), line_dash="dash",
                      line_color="black", annotation_text="unsteered")
    _layout(fig, "Alignment rank sweep", "rank k", _METRIC_LABELS.get(metric, metric))
    fig.update_xaxes(type="log", dtick=0.30103)  # log2-spaced ticks
    return fig


def cka_heatmap(frame: pd.DataFrame, *, title: str = "Linear CKA between layers") -> go.Figure:
    """Source layer (rows) x target layer (columns) heatmap of ``cka_matrix`` output."""
    _need(frame, ["source_layer", "target_layer", "cka"], "CKA heatmap")
    grid = frame.pivot(index="source_layer", columns="target_layer", values="cka").sort_index()
    grid = grid[sorted(grid.columns)]
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=list(grid.columns), y=list(grid.index), zmin=0, zmax=1,
        colorscale="Viridis", colorbar={"title": "CKA"}, name="CKA",
        hovertemplate="source %{y} · target %{x}: %{z:.3f}<extra></extra>",
    ))
    return _layout(fig, title, "target layer", "source layer")


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


def word_bars_figure(frame: pd.DataFrame, *, top: int = 10) -> go.Figure:
    """First / second generated word frequencies, grouped bars per condition, one panel per
    position (``word_frequencies`` output)."""
    _need(frame, ["condition", "position", "word", "fraction"], "word bars")
    positions = sorted(frame.position.unique())
    ordinal = {1: "first", 2: "second", 3: "third"}
    fig = make_subplots(rows=len(positions), cols=1, vertical_spacing=0.15, subplot_titles=[
        f"{ordinal.get(p, f'#{p}')} generated word" for p in positions])
    conditions = list(dict.fromkeys(frame.condition))
    for row, pos in enumerate(positions, start=1):
        part = frame[frame.position == pos]
        order = (part.groupby("word")["fraction"].max().sort_values(ascending=False)
                 .index[:top].tolist())
        for i, cond in enumerate(conditions):
            sub = part[(part.condition == cond)].set_index("word").reindex(order)
            fig.add_trace(go.Bar(x=order, y=sub["fraction"].fillna(0.0), name=str(cond),
                                 marker_color=PALETTE[i % len(PALETTE)], legendgroup=str(cond),
                                 showlegend=row == 1), row=row, col=1)
        fig.update_yaxes(title_text="fraction of outputs", row=row, col=1)
        fig.update_xaxes(title_text="word", row=row, col=1)
    fig.update_layout(title="Generated word frequencies by condition", barmode="group",
                      showlegend=True, template="plotly_white", legend_title_text="condition")
    return fig


def histogram_figure(
    frame: pd.DataFrame, column: str, *, by: str = "condition", title: str | None = None,
    x_title: str | None = None, nbins: int = 30,
) -> go.Figure:
    """Overlaid histograms of ``column`` per ``by`` group."""
    _need(frame, [column, by], "histogram")
    fig = go.Figure()
    for i, (name, part) in enumerate(frame.groupby(by, sort=False)):
        fig.add_trace(go.Histogram(x=part[column], name=str(name), nbinsx=nbins, opacity=0.6,
                                   marker_color=PALETTE[i % len(PALETTE)]))
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
