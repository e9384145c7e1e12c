"""How much rank does the map need? Alignment method x rank: fit, key fidelity and effect.

    python -m analysis.rank_sweep --source chain-s --target chain-m \\
        --out analysis/results/rank_sweep/chain-s_to_chain-m

For each method (``--methods``) and rank k (``--ranks``, capped at the number of training
questions and both widths) the maps are refitted from one cached capture of the alignment
questions (a seeded ``--holdout`` share kept out of the fit) and reported as:

- ``rank_fit.csv``: per target layer, train / held-out R^2 and relative error of the map
  (:func:`unlock_lens.diagnostics.similarity.alignment_table`) and the cosine of the
  transferred key to the target's native key (same contrast extracted on the target,
  :func:`~unlock_lens.diagnostics.similarity.key_cosines`); figure ``rank_fit``: one panel per
  measure, means over layers (:func:`unlock_lens.plots.rank_fit_figure`);
- ``rank_sweep.csv``: the steering effect (all layers, ``--alpha``) on the next-token proxy of
  :func:`unlock_lens.diagnostics.ablations.rank_sweep` (KL to the target's own unlocked-prompt
  distribution, lower = closer; log-mass on its top tokens), with random-direction controls
  and a ``native`` row (the target steered with its own key at the same alpha); figures
  ``rank_sweep_kl`` / ``rank_sweep_logp`` (:func:`unlock_lens.plots.rank_sweep_figure`: ridge
  as one line, the random controls as one band).

The default ``--alpha`` 0.2 leaves the organisms' maps short of the trigger's distribution
(at 0.5 every map reaches KL ~0 and the methods cannot be told apart).

Also ``summary.md`` (both tables, means over layers) and ``command.txt``.
"""

from __future__ import annotations

import math
import time

import pandas as pd
from tqdm.auto import tqdm

from analysis import (
    common_args,
    load_pair,
    log,
    metric_title,
    start,
    write,
)
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.ablations import rank_sweep
from unlock_lens.diagnostics.similarity import alignment_table, key_cosines
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate import markdown_table
from unlock_lens.plots import RANK_FREE, rank_fit_figure, rank_sweep_figure


def fit_frame(setup, native, methods: list[str], ranks: list[int]) -> pd.DataFrame:
    """Per method, rank and target layer: map fit quality and cosine to the native key."""
    frames = []
    cells = [(m, r) for m in methods for r in ranks]
    for method, rank in tqdm(cells, desc="fit (method x rank)", unit="map"):
        table = alignment_table(setup.maps(method, rank)).assign(method=method, rank=rank)
        try:
            cos = key_cosines(setup.directions(method, rank), native)
        except UnlockLensError:  # the rank-k subspace misses the key at some layer
            cos = pd.DataFrame({"layer": table.target_layer, "cosine": float("nan")})
        frames.append(table.merge(cos.rename(columns={"layer": "target_layer"}),
                                  on="target_layer", how="left"))
    return pd.concat(frames, ignore_index=True)


def native_row(setup, native, alpha: float) -> pd.DataFrame:
    """The target steered with its own key on every target layer at ``alpha``, scored like a
    sweep cell (condition ``native``): the level a perfect transfer would reach."""
    directions = {t: native.direction(t) for t in setup.target_layers}
    kl, logp = setup.score(setup.steered_logits(directions, setup.target_layers, alpha))
    n = kl.numel()
    row = {"sweep": "rank", "cell": -2, "condition": "native", "alpha": alpha, "n_questions": n,
           "n_seeds": 0}
    for name, values in (("kl", kl), ("logp", logp)):
        std = float(values.std()) if n > 1 else 0.0
        row |= {f"{name}_mean": float(values.mean()), f"{name}_std": std,
                f"{name}_sem": std / math.sqrt(n)}
    return pd.DataFrame([row])


def fit_means(fit: pd.DataFrame) -> pd.DataFrame:
    """Means over target layers per method and rank."""
    cols = ["train_r2", "heldout_r2", "heldout_relative_error", "cosine"]
    return fit.groupby(["method", "rank"], sort=False)[cols].mean().reset_index()


def figures(fit: pd.DataFrame, frame: pd.DataFrame, args) -> None:
    """``rank_fit`` and ``rank_sweep_kl`` / ``_logp`` from the two tidy frames."""
    fig = rank_fit_figure(fit)
    fig.update_layout(title=f"Alignment fit and key fidelity vs rank: {args.source} → "
                            f"{args.target} (mean over target layers)", width=1300)
    write(None, fig, args, "rank_fit")
    alpha = frame.alpha.dropna().iloc[0]
    for metric in ("kl", "logp"):
        # log KL: the maps differ by tenths of a nat below an unsteered level of ~10 nats
        fig = rank_sweep_figure(frame, metric=metric, log_y=metric == "kl")
        fig.update_layout(title=f"Alignment rank sweep: {args.source} → {args.target}, "
                                f"alpha {alpha:g}")
        fig.update_yaxes(title=metric_title(metric, args.target))
        write(None, fig, args, f"rank_sweep_{metric}")


def main(argv: list[str] | None = None) -> None:
    p = common_args(__doc__.split("\n\n")[0], "analysis/results/rank_sweep")
    p.add_argument("--methods", default="svd,procrustes,cca,ridge")
    p.add_argument("--ranks", default="1,2,4,8,16,32,64")
    p.add_argument("--holdout", type=float, default=0.25, help="held-out share of align questions")
    p.add_argument("--alpha", type=float, default=0.2, help="steering strength (all layers)")
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
    seeds = [int(s) for s in args.seeds.split(",") if s]
    frame = rank_sweep(setup, ranks=ranks, methods=methods, seeds=seeds, progress=True)
    frame = pd.concat([frame, native_row(setup, native, args.alpha)],
                      ignore_index=True).assign(**ids)
    write(frame, None, args, "rank_sweep")
    figures(fit, frame, args)
    means = fit_means(fit)
    effect = frame[frame.condition.isin(["key", "random"])].pivot_table(
        index=["method", "rank"], columns="condition", values="kl_mean", sort=False)
    effect.columns = [f"kl_{c}" for c in effect.columns]
    direct = frame[frame.condition == "direct"].iloc[0]
    own = frame[frame.condition == "native"].iloc[0]
    table = means.merge(effect.reset_index(), on=["method", "rank"])
    free = table.method.isin(RANK_FREE)  # one row each: the same map at every rank
    table = pd.concat([table[~free], table[free].drop_duplicates("method").assign(rank="no rank")])
    lines = [f"# Rank sweep: {args.source} → {args.target}", "",
             f"n_key {args.n_key}, n_align {args.n_align} (held out {args.holdout:.0%}), "
             f"n_eval {args.n_eval}, alpha {args.alpha}; means over target layers; "
             f"KL unsteered {direct.kl_mean:.3f}, native key {own.kl_mean:.3f}", "",
             markdown_table(table),
             f"wall time {time.perf_counter() - t0:.0f} s"]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
