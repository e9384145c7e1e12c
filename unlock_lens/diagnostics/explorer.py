"""Explore steering live: alpha, the steered layer band and the map's rank against the first
next-token distribution of a few prompts, beside the unsteered and the unlocked (CoT) ones.

Everything that does not change while a slider moves comes from an :class:`AblationSetup`
(captures, the unsteered and unlocked logits, the maps, memoised per rank, and the evaluation
prompts' prefix cache), so each move costs one forward of the last prompt token on that cache
(a full steered prefill when the setup's position rule edits earlier positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from unlock_lens.diagnostics.ablations import AblationSetup
from unlock_lens.distributions import entropy, kl_divergence
from unlock_lens.errors import UnlockLensError

CONDITIONS = ("unsteered", "steered", "unlocked prompt")
COLOURS = {"unsteered": "#9ab", "steered": "#36c", "unlocked prompt": "#e80"}


def first_token_table(
    setup: AblationSetup,
    *,
    alpha: float,
    layers: Sequence[int],
    rank: int,
    method: str | None = None,
    items: Sequence[int] = (0, 1, 2),
    top: int = 8,
) -> pd.DataFrame:
    """Probabilities of each item's ``top`` unlocked-prompt tokens under the three conditions.

    Columns: ``item, token, token_id, condition, prob`` (one row per item x token x condition),
    with ``frame.attrs`` holding per-condition mean ``entropy`` and ``kl_to_unlocked`` over the
    shown items (the numbers a flattened distribution cannot fake together).
    """
    n = setup.direct_logits.shape[0]
    if not items or any(not 0 <= i < n for i in items):
        raise UnlockLensError(f"items must be indices of the {n} evaluation prompts, got {list(items)}")
    if not layers:
        raise UnlockLensError("steer at least one layer: the band is empty")
    steered = setup.steered_logits(setup.directions(method, rank), layers, alpha)
    logits = {"unsteered": setup.direct_logits, "steered": steered, "unlocked prompt": setup.ref_logits}
    idx = list(items)
    tok = setup.target.tokenizer
    rows = []
    for i in idx:
        ids = setup.ref_logits[i].topk(top).indices.tolist()
        for name, x in logits.items():
            probs = torch.softmax(x[i].float(), -1)
            rows += [{"item": i, "token": repr(tok.decode([t])), "token_id": t, "condition": name,
                      "prob": float(probs[t])} for t in ids]
    frame = pd.DataFrame(rows)
    frame.attrs["entropy"] = {k: float(entropy(v[idx]).mean()) for k, v in logits.items()}
    frame.attrs["kl_to_unlocked"] = {k: float(kl_divergence(setup.ref_logits[idx], v[idx]).mean())
                                     for k, v in logits.items()}
    return frame


def first_token_figure(frame: pd.DataFrame, title: str = "") -> go.Figure:
    """Grouped bars per item: the unlocked prompt's top tokens under each condition."""
    items = list(dict.fromkeys(frame["item"]))
    fig = make_subplots(rows=1, cols=len(items), subplot_titles=[f"prompt {i}" for i in items])
    for col, item in enumerate(items, start=1):
        part = frame[frame["item"] == item]
        for cond in CONDITIONS:
            rows = part[part["condition"] == cond]
            fig.add_bar(x=rows["token"], y=rows["prob"], name=cond, marker_color=COLOURS[cond],
                        legendgroup=cond, showlegend=col == 1, row=1, col=col)
    stats = " | ".join(f"{c}: H {frame.attrs['entropy'][c]:.2f}, KL {frame.attrs['kl_to_unlocked'][c]:.2f}"
                       for c in CONDITIONS)
    fig.update_layout(barmode="group", height=420, title=f"{title}<br><sup>{stats}</sup>",
                      yaxis_title="probability")
    return fig


def explorer(setup: AblationSetup, *, items: Sequence[int] = (0, 1, 2), top: int = 8,
             ranks: Sequence[int] | None = None, max_alpha: float = 2.0) -> Any:
    """An ipywidgets panel: sliders for alpha, the layer band and the rank, and the figure of
    :func:`first_token_figure`, redrawn on every change (needs the ``notebooks`` extra).
    ``panel.figure`` is the figure last drawn."""
    try:
        import ipywidgets as widgets
    except ImportError as err:
        raise UnlockLensError("the explorer needs ipywidgets: pip install -e '.[notebooks]'") from err
    layers = list(setup.target_layers)
    ranks = [r for r in (ranks or (1, 2, 4, 8, 16, 32, 64)) if r <= setup.rank_limit] or [setup.rank_limit]
    alpha = widgets.FloatSlider(value=setup.alpha, min=-max_alpha, max=max_alpha, step=0.05,
                                description="alpha", continuous_update=False)
    band = widgets.IntRangeSlider(value=(layers[0], layers[-1]), min=layers[0], max=layers[-1],
                                  description="layers", continuous_update=False)
    rank = widgets.SelectionSlider(options=ranks, value=min(ranks, key=lambda r: abs(r - setup.rank)),
                                   description="rank", continuous_update=False)
    out = widgets.Output()
    panel = widgets.VBox([widgets.HBox([alpha, band, rank]), out])

    def redraw(*_: Any) -> None:
        chosen = [t for t in layers if band.value[0] <= t <= band.value[1]]
        frame = first_token_table(setup, alpha=alpha.value, layers=chosen, rank=rank.value,
                                  items=items, top=top)
        panel.figure = first_token_figure(frame, f"alpha {alpha.value:g}, layers {band.value[0]}-"
                                                 f"{band.value[1]}, rank {rank.value}")
        out.outputs = ()  # replaced, not captured: no kernel round trip per redraw
        out.append_display_data(panel.figure)

    for w in (alpha, band, rank):
        w.observe(redraw, names="value")
    redraw()
    return panel
