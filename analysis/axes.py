"""Many capabilities on the real pair: ``analysis/results/axes.md`` from one ``transfer-report`` run.

    unlock-lens transfer-report --source smollm2-135m-instruct --target gemma-3-270m \\
        --kinds tokens+last,contrasts,last --dev-alphas 0.05,0.1,0.2 --threads 1 --out analysis/results/axes
    python -m analysis.axes        # -> analysis/results/axes.md and axes_scatter.html (+ .png)

The run measures every registry axis in both directions (see README, "Transfer report across
capability axes"); this script only lays its ``report.json`` out: per direction and axis the
native effect, F [CI] and p (direction level) per data kind, the behaviour share of the native
key, the anti-steerable fraction and the prompting baseline; the median F over the axes with a
native effect per data kind; and a scatter across axes of F against the native key's strength,
its effective rank and the mapped key's cosine to the native key. The reading at the end of
``axes.md`` is written by hand and kept when the tables are rewritten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis import write_keeping_reading
from unlock_lens.plots import save_figure

RUN = Path(__file__).parent / "results" / "axes"
OUT = Path(__file__).parent / "results" / "axes.md"


def _f(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def axis_table(records: list[dict[str, Any]], kinds: list[str]) -> list[str]:
    head = ("| direction | axis | α | native effect (p) | prompt effect | "
            + " | ".join(f"F {k} [CI] (p)" for k in kinds)
            + f" | share of native ({kinds[0]}) | anti-steerable | cos to native ({kinds[0]}) |")
    lines = [head, "|" + " --- |" * (head.count(" | ") + 1)]
    for r in records:
        nat = r["native"]
        effect = f"{_f(nat['effect'])} ({_f(nat['p'], '.2f')})" + ("" if nat["has_effect"] else " **no native effect**")
        prompt_effect = r["prompt"]["effect"]
        cells = []
        for k in kinds:
            v = r["kinds"].get(k)
            cells.append("–" if v is None else f"{_f(v['F'])} [{_f(v.get('F_lo'))}, {_f(v.get('F_hi'))}] "
                         f"({_f(v.get('p'), '.3f')})")
        first = r["kinds"].get(kinds[0], {})
        lines.append(f"| {r['direction']} | {r['axis']} | {r['alpha']:g} | {effect} | {_f(prompt_effect)} | "
                     + " | ".join(cells)
                     + f" | {_f(first.get('share'))} | {_f(first.get('anti_steerable'))} | {_f(first.get('cosine_to_native'))} |")
    return lines


def scatter(records: list[dict[str, Any]], kinds: list[str], path: Path) -> list[Path]:
    """F per data kind (one row each) against native strength, key effective rank and the
    mapped key's cosine to native, one marker per axis and direction."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    xs = {"native behaviour effect": lambda r, k: r["native"]["effect"],
          "native key effective rank": lambda r, k: r["native"].get("effective_rank", np.nan),
          "cosine of mapped key to native": lambda r, k: r["kinds"][k].get("cosine_to_native", np.nan)}
    fig = make_subplots(rows=len(kinds), cols=3, shared_yaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"{name} ({k})" for k in kinds for name in xs])
    colours = ("#1f77b4", "#d62728")
    for row, kind in enumerate(kinds, start=1):
        for col, (name, get) in enumerate(xs.items(), start=1):
            for c, direction in enumerate(dict.fromkeys(r["direction"] for r in records)):
                mine = [r for r in records if r["direction"] == direction and kind in r["kinds"]]
                fig.add_trace(go.Scatter(
                    x=[get(r, kind) for r in mine], y=[r["kinds"][kind]["F"] for r in mine], mode="markers+text",
                    text=[r["axis"] for r in mine], textposition="top center", name=direction,
                    legendgroup=direction, showlegend=row == 1 and col == 1,
                    marker={"symbol": ["circle" if r["native"]["has_effect"] else "circle-open" for r in mine],
                            "size": 9, "color": colours[c % len(colours)]}), row=row, col=col)
            fig.update_xaxes(title_text=name, row=row, col=col)
        fig.update_yaxes(title_text=f"F ({kind})", row=row, col=1)
    fig.update_layout(title="Transfer across capability axes (open marker: no native effect)",
                      width=1300, height=380 * len(kinds))
    return save_figure(fig, path, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=RUN)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    summary = json.loads((args.run / "report.json").read_text())
    records, kinds = summary["records"], list(summary["settings"]["kinds"])
    s = summary["settings"]
    lines = ["# Many capabilities: transfer on every axis, SmolLM2-135M-Instruct ⇄ Gemma-3-270M", "",
             __doc__.split("\n\n")[1].strip(), "",
             f"Sizes: {json.dumps({k: v for k, v in s.items() if k not in ('source', 'target')})}; "
             f"{summary.get('seconds_this_run', '?')} s for the last run's part.", "",
             "F = (LL_transferred − LL_unsteered) / (LL_native − LL_unsteered) of the native key's greedy "
             "continuations; p: rank among the random-mapped null directions (the unit is the direction). "
             "Native effect: mean behaviour score under the native key minus unsteered; p among random target "
             "directions of the same norms. Share, anti-steerable fraction and cosine: through the first data "
             "kind's maps.", "",
             "## Per axis and direction", "", *axis_table(records, kinds), "",
             "## Median F over the axes with a native effect", "",
             "| direction | data kind | median F | axes with a native effect / all |", "| --- | --- | --- | --- |"]
    for m in summary["medians"]:
        lines.append(f"| {m['direction']} | {m['kind']} | {_f(m['median_F'])} | {m['axes_with_native_effect']} / {m['axes']} |")
    figs = scatter(records, kinds, args.out.parent / "axes_scatter")
    lines += ["", "## F across axes", ""]
    for fig in figs:
        rel = fig.relative_to(args.out.parent)
        lines.append(f"![F across axes]({rel})" if fig.suffix == ".png" else f"Figure: [{rel}]({rel})")
    return write_keeping_reading(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    print(main())
