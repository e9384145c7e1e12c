"""Where does the transferred key act? Steer one target layer at a time (and all-but-one).

    python -m analysis.layer_sweep --source chain-s --target chain-m \\
        --out analysis/results/layer_sweep/chain-s_to_chain-m

Extracts the source's prompt-driven key, fits the maps (``--method``, ``--rank``) on the
alignment questions, then for each target layer steers only that layer (``single_layer``, at
``--alpha``) or every layer but that one (``leave_one_out``, at ``--loo-alpha``: with three of
the organism's four layers steered at 0.5 every variant reaches KL ~0) and scores the target's
next-token distribution on the direct prompt against its own unlocked-prompt distribution
(:mod:`unlock_lens.diagnostics.ablations`: KL, lower = closer; log-mass on the unlocked top
tokens, higher = closer), with random-direction controls and the unsteered baseline.

Writes ``<sweep>.csv`` (tidy, one row per cell and condition) and ``<sweep>_kl`` /
``<sweep>_logp`` figures (HTML, PNG when static export works), ``summary.md`` and
``command.txt``.
"""

from __future__ import annotations

import time

import pandas as pd

from analysis import (
    common_args,
    load_pair,
    log,
    metric_title,
    readable_scale,
    start,
    write,
)
from unlock_lens.align.layers import AlignSpec
from unlock_lens.diagnostics.ablations import leave_one_out_sweep, single_layer_sweep
from unlock_lens.evaluate import markdown_table
from unlock_lens.plots import layer_sweep_figure

SWEEPS = {"single_layer": single_layer_sweep, "leave_one_out": leave_one_out_sweep}


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layer: key vs random-control KL and log-mass (the figure's numbers, wide)."""
    cells = frame[frame.condition != "direct"]
    wide = cells.pivot_table(index="layer", columns="condition",
                             values=["kl_mean", "logp_mean"]).sort_index()
    wide.columns = [f"{m.removesuffix('_mean')}_{c}" for m, c in wide.columns]
    wide.index = wide.index.astype(int)
    return wide.reset_index()


def figures(frame: pd.DataFrame, name: str, args) -> None:
    """``<name>_kl`` / ``<name>_logp`` from a sweep's tidy frame."""
    alpha = frame.alpha.dropna().iloc[0]
    layers = frame.layer.dropna()
    for metric in ("kl", "logp"):
        fig = layer_sweep_figure(frame, metric=metric)
        fig.update_layout(title=f"{fig.layout.title.text}: {args.source} → {args.target}, "
                                f"alpha {alpha:g}")
        fig.update_xaxes(dtick=1, range=[layers.min() - 0.5, layers.max() + 0.5])
        fig.update_yaxes(title=metric_title(metric, args.target))
        readable_scale(fig, frame, metric)
        fig.update_traces(mode="lines", selector={"fill": "toself"})  # band: no vertex dots
        write(None, fig, args, f"{name}_{metric}")


def main(argv: list[str] | None = None) -> None:
    p = common_args(__doc__.split("\n\n")[0], "analysis/results/layer_sweep")
    p.add_argument("--method", default="svd")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.5, help="steering strength per layer")
    p.add_argument("--loo-alpha", type=float, default=0.2,
                   help="steering strength of the leave-one-out sweep")
    p.add_argument("--seeds", default="0,1,2", help="random-control seeds")
    p.add_argument("--sweeps", default="single_layer,leave_one_out",
                   help=f"comma list of {list(SWEEPS)}")
    args = p.parse_args(argv)
    t0 = start(args, "analysis.layer_sweep")
    if args.replot:
        for name in args.sweeps.split(","):
            figures(pd.read_csv(args.out / f"{name}.csv"), name, args)
        return
    pair = load_pair(args.source, args.target, args.n_key, args.n_align, args.n_eval, args.seed)
    log(t0, f"key extracted from {args.source} ({len(pair.key.layers)} layers)")
    setup = pair.ablation(spec=AlignSpec(args.method, args.rank), alpha=args.alpha)
    log(t0, "activations and reference logits cached")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lines = [f"# Layer sweep: {args.source} → {args.target}", "",
             f"method {args.method}, rank {args.rank}, alpha {args.alpha} (leave-one-out "
             f"{args.loo_alpha}), n_key {args.n_key}, n_align {args.n_align}, n_eval "
             f"{args.n_eval}, seeds {seeds}", ""]
    for name in args.sweeps.split(","):
        alpha = args.loo_alpha if name == "leave_one_out" else args.alpha
        frame = SWEEPS[name](setup, seeds=seeds, alpha=alpha, progress=True)
        frame.insert(0, "target", args.target)
        frame.insert(0, "source", args.source)
        write(frame, None, args, name)
        figures(frame, name, args)
        direct = frame[frame.condition == "direct"].iloc[0]
        table = summary_table(frame)
        lines += [f"## {name.replace('_', ' ')}", "",
                  f"unsteered: KL {direct.kl_mean:.3f}, logp {direct.logp_mean:.3f}", "",
                  markdown_table(table), ""]
        log(t0, name, "done")
    lines.append(f"wall time {time.perf_counter() - t0:.0f} s")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
