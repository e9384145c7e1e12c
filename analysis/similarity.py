"""How alike are the two models' representations? CKA, principal angles, CCA, key cosines.

    python -m analysis.similarity --source chain-s --target chain-m \\
        --out analysis/results/similarity/chain-s_to_chain-m

Captures final-token residual streams of both models at every layer on the alignment
questions (each model in its locked format) and on the held-out evaluation questions, fits
the maps on the alignment questions (``--method``, ``--rank``), then writes
(:mod:`unlock_lens.diagnostics.similarity`):

- ``cka.csv`` + ``cka`` heatmaps: linear CKA, every source layer x every target layer, on the
  alignment questions and on the held-out evaluation questions (column ``prompts``; on the
  organisms the alignment set mixes short and long chains, whose split dominates the variance
  and puts every cell above 0.93; the held-out short chains show the layers apart)
  (``--debiased`` for the unbiased estimator, whose null value is ~0 when n is small vs d);
- ``principal_angles.csv`` + figure: per fitted map, the angles between the mapped source
  top-``--k`` subspace and the target's own top-k subspace, measured on the *held-out*
  questions (on the fitting questions a rank-k svd map has angles ~0 by construction);
- ``cca.csv``: canonical correlations of the depth-matched layer pairs (top-k PCA coordinates);
- ``key_cosines.csv``: cosine of the transferred key to the target's native key per layer;
- ``summary.md`` and ``command.txt``.
"""

from __future__ import annotations

import time

import pandas as pd
import plotly.graph_objects as go

from analysis import common_args, load_pair, log, start, write
from unlock_lens.activations import Variant, capture
from unlock_lens.align.layers import AlignSpec, map_directions
from unlock_lens.diagnostics.similarity import (
    cca_table,
    cka_matrix,
    key_cosines,
    principal_angle_table,
)
from unlock_lens.evaluate import markdown_table
from unlock_lens.plots import cka_panels, principal_angles_figure
from unlock_lens.unlock import align_key


def cka_kind(args) -> str:
    return "debiased linear CKA" if args.debiased else "linear CKA"


def figures(cka: pd.DataFrame, angles: pd.DataFrame, args) -> None:
    """``cka`` heatmaps and ``principal_angles`` figure (titles from the flags)."""
    sets = cka.assign(prompts=cka.get("prompts", "align")).groupby("prompts", sort=False)
    sizes = {"align": args.n_align, "eval": args.n_eval}
    names = {"align": "alignment", "eval": "held-out"}
    fig = cka_panels({f"{names.get(k, k)} prompts (n={sizes.get(k, '?')})": part
                      for k, part in sets},
                     title=f"{cka_kind(args)} between layers<br><sup>source {args.source} "
                           f"(rows), target {args.target} (columns)</sup>")
    if len(cka) > 144 * sets.ngroups:
        fig.update_traces(texttemplate=None)  # large grids: no values in the cells
    fig.update_xaxes(dtick=1 if cka.target_layer.nunique() <= 20 else 2)
    fig.update_yaxes(dtick=1 if cka.source_layer.nunique() <= 20 else 2)
    fig.update_layout(width=550 * sets.ngroups, height=500)
    write(None, fig, args, "cka")
    n_pairs = angles.groupby(["source_layer", "target_layer"]).ngroups
    fig = principal_angles_figure(angles) if n_pairs <= 8 else angles_heatmap(angles)
    fig.update_layout(title=f"Principal angles on {args.n_eval} held-out prompts<br><sup>"
                            f"mapped {args.source} top-{args.k} subspace vs {args.target} "
                            f"top-{args.k} subspace ({args.method} map, rank {args.rank})</sup>")
    fig.update_xaxes(dtick=1)
    write(None, fig, args, "principal_angles")


def angles_heatmap(angles: pd.DataFrame) -> go.Figure:
    """Many layer pairs: angle (colour) by target layer (rows) and angle index (columns)."""
    grid = angles.pivot(index="target_layer", columns="index", values="angle_deg").sort_index()
    source = angles.groupby("target_layer").source_layer.first()
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=list(grid.columns), y=[f"{t} ← {source[t]}" for t in grid.index],
        zmin=0, zmax=90, colorscale="Viridis", colorbar={"title": "angle [°]"},
        hovertemplate="target ← source %{y}, angle %{x}: %{z:.1f}°<extra></extra>"))
    fig.update_layout(template="plotly_white", xaxis_title="principal angle index",
                      yaxis_title="target layer ← source layer", height=max(450, 22 * len(grid)))
    return fig


def main(argv: list[str] | None = None) -> None:
    p = common_args(__doc__.split("\n\n")[0], "analysis/results/similarity")
    p.add_argument("--method", default="svd")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--k", type=int, default=8, help="subspace dimension for angles and CCA")
    p.add_argument("--debiased", action="store_true", help="debiased (unbiased HSIC) CKA")
    args = p.parse_args(argv)
    t0 = start(args, "analysis.similarity")
    if args.replot:
        figures(pd.read_csv(args.out / "cka.csv"), pd.read_csv(args.out / "principal_angles.csv"),
                args)
        return
    pair = load_pair(args.source, args.target, args.n_key, args.n_align, args.n_eval, args.seed)
    src = Variant(pair.source, pair.source_formats[0])
    tgt = Variant(pair.target, pair.target_formats[0])
    n_s, n_t = int(pair.source.cfg.n_layers), int(pair.target.cfg.n_layers)
    H = {split: (capture(src.model, src.prompts(pair.questions[split]), list(range(n_s)),
                         progress=f"capture {args.source} ({split})"),
                 capture(tgt.model, tgt.prompts(pair.questions[split]), list(range(n_t)),
                         progress=f"capture {args.target} ({split})"))
         for split in ("align", "eval")}
    log(t0, "captured", {k: tuple(v[0].shape) for k, v in H.items()})
    ids = {"source": args.source, "target": args.target}

    cka = pd.concat([cka_matrix(*H[split], debiased=args.debiased).assign(prompts=split)
                     for split in ("align", "eval")], ignore_index=True).assign(**ids)
    write(cka, None, args, "cka")
    maps = align_key(pair.key, src, tgt, pair.questions["align"], AlignSpec(args.method, args.rank))
    angles = principal_angle_table(*H["eval"], maps, args.k).assign(**ids)
    write(angles, None, args, "principal_angles")
    figures(cka, angles, args)

    pairs = sorted({(m.source_layer, t) for t, m in maps.items()})
    cca = cca_table(*H["align"], pairs, args.k).assign(**ids)
    write(cca, None, args, "cca")

    cos = key_cosines(map_directions(pair.key, maps), pair.native_key()).assign(**ids)
    write(cos, None, args, "key_cosines")

    per_layer = (angles.groupby("target_layer").angle_deg.mean().rename("mean_angle_deg")
                 .reset_index()
                 .merge(cca.groupby("target_layer").correlation.mean().rename("mean_cca")
                        .reset_index(), on="target_layer")
                 .merge(cos.rename(columns={"layer": "target_layer"})[["target_layer", "cosine"]],
                        on="target_layer"))
    for split, name in (("align", "best_cka_source_layer"),
                        ("eval", "best_heldout_cka_source_layer")):
        part = cka[cka.prompts == split]
        best = part.loc[part.groupby("target_layer").cka.idxmax(), ["target_layer", "source_layer"]]
        per_layer = per_layer.merge(best.rename(columns={"source_layer": name}), on="target_layer")
    per_layer.insert(1, "source_layer", [maps[t].source_layer for t in per_layer.target_layer])
    lines = [f"# Similarity: {args.source} → {args.target}", "",
             f"{args.n_align} alignment / {args.n_eval} held-out prompts, {args.method} rank "
             f"{args.rank}, k {args.k}, {cka_kind(args)}", "", markdown_table(per_layer),
             f"wall time {time.perf_counter() - t0:.0f} s"]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
