"""How much rank does the map need? Alignment method x rank: fit, key fidelity and effect.

    python -m analysis.rank_sweep --source chain-s --target chain-m \\
        --out analysis/results/rank_sweep/chain-s_to_chain-m

For each method (``--methods``) and rank k (``--ranks``, capped at the number of training
questions and both widths) the maps are refitted from one cached capture of the alignment
questions (a seeded ``--holdout`` share kept out of the fit) and reported as:

- ``rank_fit.csv``: per target layer, train / held-out R^2 and relative error of the map
  (:func:`unlock_lens.diagnostics.similarity.alignment_table`) and the cosine of the
  transferred key to the target's native key (same contrast extracted on the target,
  :func:`~unlock_lens.diagnostics.similarity.key_cosines`); figure ``rank_fit``: means over
  layers;
- ``rank_sweep.csv``: the steering effect (all layers, ``--alpha``) on the next-token proxy of
  :func:`unlock_lens.diagnostics.ablations.rank_sweep` (KL to the target's own unlocked-prompt
  distribution, lower = closer; log-mass on its top tokens), with random-direction controls;
  figures ``rank_sweep_kl`` / ``rank_sweep_logp``.

Also ``summary.md`` (both tables, means over layers) and ``command.txt``.
"""

from __future__ import annotations

import time

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from analysis import common_args, load_pair, log, metric_title, readable_scale, start, write
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.ablations import rank_sweep
from unlock_lens.diagnostics.similarity import alignment_table, key_cosines
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate import markdown_table
from unlock_lens.plots import rank_sweep_figure


def fit_frame(setup, native, methods: list[str], ranks: list[int]) -> pd.DataFrame:
    """Per method, rank and target layer: map fit quality and cosine to the native key."""
    frames = []
    for method in methods:
        for rank in ranks:
            table = alignment_table(setup.maps(method, rank)).assign(method=method, rank=rank)
            try:
                cos = key_cosines(setup.directions(method, rank), native)
            except UnlockLensError:  # the rank-k subspace misses the key at some layer
                cos = pd.DataFrame({"layer": table.target_layer, "cosine": float("nan")})
            frames.append(table.merge(cos.rename(columns={"layer": "target_layer"}),
                                      on="target_layer", how="left"))
    return pd.concat(frames, ignore_index=True)


def fit_figure(means: pd.DataFrame, title: str):
    """Held-out R^2 and cosine to the native key vs rank, one line per method."""
    names = {"heldout_r2": "held-out R² (axis clipped at −1)",
             "heldout_relative_error": "held-out ‖H_t − H_s W‖ / ‖H_t‖",
             "cosine": "cosine(transferred key, native key)"}
    long = means.melt(id_vars=["method", "rank"], value_vars=list(names),
                      var_name="measure", value_name="value")
    long["measure"] = long.measure.map(names)
    fig = px.line(long, x="rank", y="value", color="method", facet_col="measure", markers=True,
                  log_x=True, title=title, template="plotly_white", width=1200, height=450,
                  facet_col_spacing=0.06,
                  labels={"rank": "rank k", "value": "mean over target layers"})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_yaxes(range=[max(-1.05, float(means.heldout_r2.min()) - 0.05), 1.05], col=1)
    fig.update_xaxes(dtick=0.30103)  # log2-spaced ticks
    return fig


def effect_figure(frame: pd.DataFrame, metric: str):
    """:func:`rank_sweep_figure`; one random-control line when every map's control is the same
    (the norm-preserving edit ignores the direction's norm, so random controls coincide)."""
    rnd = frame[frame.condition == "random"][f"{metric}_mean"]
    if len(rnd) == 0 or rnd.max() - rnd.min() > 1e-4 * max(1.0, abs(rnd.max())):
        return rank_sweep_figure(frame, metric=metric)
    fig = rank_sweep_figure(frame, metric=metric, show_random=False)
    fig.add_hline(y=float(rnd.mean()), line_dash="dot", line_color="#7f7f7f",
                  annotation_text="random direction", annotation_position="bottom right")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="random direction (any map)",
                             line={"color": "#7f7f7f", "dash": "dot"}))
    return fig


def fit_means(fit: pd.DataFrame) -> pd.DataFrame:
    """Means over target layers per method and rank."""
    cols = ["train_r2", "heldout_r2", "heldout_relative_error", "cosine"]
    return fit.groupby(["method", "rank"], sort=False)[cols].mean().reset_index()


def figures(fit: pd.DataFrame, frame: pd.DataFrame, args) -> None:
    """``rank_fit`` and ``rank_sweep_kl`` / ``_logp`` from the two tidy frames."""
    write(None, fit_figure(fit_means(fit), f"Alignment fit and key fidelity vs rank: "
                                           f"{args.source} → {args.target}"), args, "rank_fit")
    alpha = frame.alpha.dropna().iloc[0]
    for metric in ("kl", "logp"):
        fig = effect_figure(frame, metric)
        fig.update_layout(title=f"Alignment rank sweep: {args.source} → {args.target}, "
                                f"alpha {alpha:g}")
        fig.update_yaxes(title=metric_title(metric, args.target))
        readable_scale(fig, frame, metric)
        write(None, fig, args, f"rank_sweep_{metric}")


def main(argv: list[str] | None = None) -> None:
    p = common_args(__doc__.split("\n\n")[0], "analysis/results/rank_sweep")
    p.add_argument("--methods", default="svd,procrustes,cca,ridge")
    p.add_argument("--ranks", default="1,2,4,8,16,32,64")
    p.add_argument("--holdout", type=float, default=0.25, help="held-out share of align questions")
    p.add_argument("--alpha", type=float, default=0.5, help="steering strength (all layers)")
    p.add_argument("--seeds", default="0,1,2", help="random-control seeds")
    args = p.parse_args(argv)
    t0 = start(args, "analysis.rank_sweep")
    if args.replot:
        figures(pd.read_csv(args.out / "rank_fit.csv"), pd.read_csv(args.out / "rank_sweep.csv"),
                args)
        return
    pair = load_pair(args.source, args.target, args.n_key, args.n_align, args.n_eval, args.seed)
    native = pair.native_key()
    log(t0, "source and native keys extracted")
    setup = pair.ablation(spec=AlignSpec(holdout=args.holdout), alpha=args.alpha)
    log(t0, "activations and reference logits cached")
    methods = args.methods.split(",")
    ranks = sorted({min(int(r), setup.rank_limit) for r in args.ranks.split(",")})
    ids = {"source": args.source, "target": args.target}
    fit = fit_frame(setup, native, methods, ranks).assign(**ids)
    write(fit, None, args, "rank_fit")
    log(t0, "fit table done")
    frame = rank_sweep(setup, ranks=ranks, methods=methods,
                       seeds=[int(s) for s in args.seeds.split(",") if s]).assign(**ids)
    write(frame, None, args, "rank_sweep")
    figures(fit, frame, args)
    means = fit_means(fit)
    effect = frame[frame.condition != "direct"].pivot_table(
        index=["method", "rank"], columns="condition", values="kl_mean", sort=False)
    effect.columns = [f"kl_{c}" for c in effect.columns]
    direct = frame[frame.condition == "direct"].iloc[0]
    table = means.merge(effect.reset_index(), on=["method", "rank"])
    lines = [f"# Rank sweep: {args.source} → {args.target}", "",
             f"n_key {args.n_key}, n_align {args.n_align} (held out {args.holdout:.0%}), "
             f"n_eval {args.n_eval}, alpha {args.alpha}; means over target layers; "
             f"unsteered KL {direct.kl_mean:.3f}", "", markdown_table(table),
             f"wall time {time.perf_counter() - t0:.0f} s"]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
