"""Alignment data kinds on a real pair: does richer trigger-free data carry the key?

One key (library protocol: the source's direct vs CoT prompt on ``--n-key`` GSM8K-train
questions), then for each alignment data kind (``last``, the paper's; ``tokens``; ``text``;
``tokens+last``), rank and alpha, a map into the target fitted on ``--n-align`` other questions
(streamed Gram statistics for the token kinds). Every configuration is scored on ``--n-dev``
held-out questions at the first generated token, from one cached prefix (one one-position
forward per configuration), against the target's own CoT-prompted distribution:

- KL(CoT || steered), entropy, the probability of the CoT prompt's top token, top-1 agreement
  (KL alone rewards flattening: never read it alone), and the mapped key's per-layer cosine to
  the target's native key;

beside the unsteered prompt, the native key at the same alpha, and random source directions of
the key's norms carried through the same maps (``--seeds``, 95% t-intervals). The first-token
measures prune; the summary's per-kind pick is, at the smallest alpha where the native key
changes the first token of most dev questions, the rank closest to the *native key's* own
first-token distribution (transfer fidelity), not to the CoT prompt's. Then, for each kind's
pick, greedy generation on ``--n-gen`` SVAMP dev problems (the ``dev`` part of ``real_pair_data``'s
split, disjoint from its evaluation problems): identical-output share and token
agreement with the native key at the same alpha on the problems whose output the native key
changed (fidelity), the degenerate-output rate and, among non-degenerate outputs, the CoT-format
rate beside the share with two or more arithmetic steps, against a random-mapped control.

    python -m analysis.data_kinds --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.data_kinds --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.data_kinds --report

``--kinds`` also takes ``continuations`` (the source's CoT-prompted outputs, ``--max-new-tokens``
each, teacher-forced after the direct prompt; ``unlock_lens.alignment_data``). ``--cosine-only``
stops after the per-layer cosines to the native key (``cosine_to_native.csv`` and ``run.json``
in ``--out``; no grid, no generation, not read by ``--report``):

    python -m analysis.data_kinds --cosine-only --kinds last,tokens+last,continuations \
        --max-pairs 2000 --out analysis/results/data_kinds_cosine
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis import MapBank, open_direction, write_keeping_reading
from analysis.protocol_diff import METRICS, first_token_metrics, interval
from analysis.real_pair import EVAL_PARTS
from unlock_lens import Steering, Unlock, generate, load_dataset
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.controls import random_like
from unlock_lens.diagnostics.cached_scoring import prefix_cache, score_last_position
from unlock_lens.diagnostics.fidelity import transfer_fidelity
from unlock_lens.distributions import kl_divergence
from unlock_lens.evaluate import split_problems
from unlock_lens.evaluate.datasets import Problem
from unlock_lens.evaluate.results import arithmetic_steps, degenerate, shows_working

RESULTS = Path("analysis/results")
KINDS = ("last", "tokens", "text", "tokens+last")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n-key", type=int, default=64)
    p.add_argument("--n-align", type=int, default=64, help="alignment questions (disjoint from the key's)")
    p.add_argument("--n-dev", type=int, default=32, help="held-out questions the grid is scored on")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--ranks", default="16,64,256")
    p.add_argument("--alphas", default="0.01,0.02,0.05,0.1",
                   help="0.01 and 0.02 added to the paper's grid: at these sizes 0.1 already overshoots")
    p.add_argument("--max-pairs", type=int, default=4000, help="cap on token / text pairs (seeded)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--n-gen", type=int, default=30, help="SVAMP problems generated per condition")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generated tokens (also each continuation's)")
    p.add_argument("--seed", type=int, default=0, help="SVAMP dev / eval split (real_pair_data's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cosine-only", action="store_true",
                   help="only the per-layer cosine of each kind's mapped key to the native key (no grid, no generation)")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "data_kinds")
    p.add_argument("--md", type=Path, default=RESULTS / "data_kinds.md")
    return p.parse_args(argv)


def generation_problems(n: int, seed: int = 0) -> list[Problem]:
    """The SVAMP problems generated on: the first ``n`` of the ``dev`` part of the split
    ``real_pair_data`` uses (``EVAL_PARTS``, same seed), so none is one of its evaluation problems."""
    dev = split_problems(load_dataset("svamp", "test"), EVAL_PARTS, seed=seed)["dev"]
    if n > len(dev):
        raise SystemExit(f"--n-gen {n}: the SVAMP dev part has {len(dev)} problems; lower --n-gen")
    return dev[:n]


def text_measures(texts: list[str]) -> dict[str, float]:
    """The degenerate share, and among the other outputs the CoT-format share (lenient) beside
    the share with two or more arithmetic steps (strict)."""
    healthy = [t for t in texts if not degenerate(t)]
    return {"degenerate": 1 - len(healthy) / len(texts),
            "cot_non_degenerate": sum(map(shows_working, healthy)) / len(healthy) if healthy else math.nan,
            "multi_step_non_degenerate": (sum(arithmetic_steps(t) >= 2 for t in healthy) / len(healthy)
                                          if healthy else math.nan)}


def cosines(directions: dict[int, torch.Tensor], native: Any) -> list[float]:
    return [float(torch.nn.functional.cosine_similarity(directions[t], native.direction(t), dim=0))
            for t in sorted(directions)]


def _mean_cos(cos_rows: list[dict[str, Any]], kind: str, rank: int) -> float:
    vals = [r["cosine_to_native"] for r in cos_rows if r["kind"] == kind and r["rank"] == rank]
    return sum(vals) / len(vals)


def mapped_keys(bank: MapBank, kinds: list[str], ranks: list[int], key: Any, native: Any, cos_rows: list[dict[str, Any]],
                log: Any) -> Iterator[tuple[str, int, Any, dict[int, torch.Tensor]]]:
    """(kind, rank, maps, mapped key) for every rank the kind's pairs and both widths allow, its
    per-layer cosines to the native key appended to ``cos_rows`` (one capture per kind)."""
    for kind in tqdm(kinds, desc="data kinds"):
        for rank in ranks:
            if rank > min(bank.n_fit(kind), key.directions.shape[-1], native.directions.shape[-1]):
                continue
            maps = bank(kind, "svd", rank)
            dirs = map_directions(key, maps)
            cos_rows += [{"kind": kind, "rank": rank, "target_layer": t, "cosine_to_native": c}
                         for t, c in zip(sorted(dirs), cosines(dirs, native), strict=True)]
            log(f"{kind} rank {rank}: mean cos to native {_mean_cos(cos_rows, kind, rank):.3f}")
            yield kind, rank, maps, dirs


def run_direction(args: argparse.Namespace) -> Path:
    d = open_direction(args)
    out, t0, log, pipe, target = d.out, d.t0, d.log, d.pipe, d.pipe.target
    pool, key_qs, align_qs = d.pool, d.key_qs, d.align_qs
    dev_qs = pool[: args.n_dev]
    key = pipe.extract(key_qs)
    native = Unlock(target, target, protocol="library").extract(key_qs)
    tv = pipe.target_variant
    ranks = [int(r) for r in args.ranks.split(",")]
    packs, cos_rows = {}, []
    stops = tuple(pipe.protocol.decoding_for().stop_strings)
    bank = MapBank(pipe.locked, tv, align_qs, LayerPairing.by_depth(key.source.n_layers, int(target.cfg.n_layers)),
                   args.max_pairs, progress=True, unlocked=pipe.unlocked,
                   continuation_tokens=args.max_new_tokens, continuation_stop=stops)
    run = {k: v for k, v in vars(args).items() if k not in ("out", "md", "report")}
    run["command"] = " ".join(["python -m analysis.data_kinds", *map(shlex.quote, sys.argv[1:])])
    if args.cosine_only:  # the per-layer cosine of each kind's mapped key to the native key, nothing else
        for _ in mapped_keys(bank, args.kinds.split(","), ranks, key, native, cos_rows, log):
            pass
        pd.DataFrame(cos_rows).to_csv(out / "cosine_to_native.csv", index=False)
        # no continuation text: it quotes the alignment questions (kept out of the repository)
        run |= {"wall_s": round(time.perf_counter() - t0), "n_pairs": {k: bank.n_fit(k) for k in args.kinds.split(",")}}
        (out / "run.json").write_text(json.dumps(run, indent=1))
        return out
    _, t_cot = pipe.protocol.formats(target.tokenizer)
    reference = score_last_position(target, prefix_cache(target, t_cot.render_all(dev_qs, target.tokenizer)))
    cache = prefix_cache(target, tv.prompts(dev_qs))
    unsteered = score_last_position(target, cache)
    alphas = [float(a) for a in args.alphas.split(",")]
    log("key, native key and reference distributions ready")

    rows: list[dict[str, Any]] = [{"kind": "-", "condition": "unsteered", "rank": 0, "alpha": 0.0,
                                   **first_token_metrics(reference, unsteered)}]
    native_logits = {}
    for a in alphas:
        native_logits[a] = score_last_position(target, cache, Steering(native.directions, alpha=a))
        rows.append({"kind": "-", "condition": "native key", "rank": 0, "alpha": a,
                     **first_token_metrics(reference, native_logits[a])})
    for kind, rank, maps, dirs in mapped_keys(bank, args.kinds.split(","), ranks, key, native, cos_rows, log):
        packs[kind, rank] = maps
        for a in alphas:
            logits = score_last_position(target, cache, Steering(dirs, alpha=a))
            rows.append({"kind": kind, "condition": "transferred key", "rank": rank, "alpha": a,
                         **first_token_metrics(reference, logits),
                         "kl_to_native": float(kl_divergence(native_logits[a], logits).mean())})
    grid = pd.DataFrame(rows)

    # alpha: the smallest at which the native key changes the first token on most dev questions
    # (at a tiny alpha every direction, random ones included, looks "like the native key")
    moved = {a: float((native_logits[a].argmax(-1) != unsteered.argmax(-1)).float().mean()) for a in alphas}
    alpha = next((a for a in alphas if moved[a] >= 0.5), alphas[-1])
    log(f"native key moves the first token on {moved}; alpha for the picks: {alpha}")
    # per kind, at that alpha: the configuration closest to the native key's own distribution
    picks = (grid[(grid.condition == "transferred key") & (grid.alpha == alpha)].sort_values("kl_to_native")
             .groupby("kind", sort=False).head(1))
    summary, samples = [], {}
    svamp = generation_problems(args.n_gen, args.seed)
    prompts = tv.prompts([p.question for p in svamp])

    def gen(steering: Steering | None) -> list[str]:
        return [g.text for g in generate(target, prompts, steering=steering, max_new_tokens=args.max_new_tokens,
                                         stop_strings=pipe.protocol.decoding_for().stop_strings)]

    base_texts = gen(None)
    native_texts: dict[float, list[str]] = {}
    for _, pick in tqdm(list(picks.iterrows()), desc="kinds: controls + generation"):
        maps, a = packs[pick.kind, int(pick["rank"])], float(pick.alpha)
        per_seed, random_texts = [], None
        for seed in range(args.seeds):
            rnd = random_like({layer: key.direction(layer) for layer in key.layers}, seed)
            steering = Steering(map_directions(rnd, maps), alpha=a)
            per_seed.append(first_token_metrics(reference, score_last_position(target, cache, steering)))
            if seed == 0:
                random_texts = gen(steering)
        if a not in native_texts:
            native_texts[a] = gen(Steering(native.directions, alpha=a))
        texts = gen(Steering(map_directions(key, maps), alpha=a))
        row = {"kind": pick.kind, "rank": int(pick["rank"]), "alpha": a,
               **{m: pick[m] for m in METRICS}, "kl_to_native": pick.kl_to_native,
               "mean_cos_to_native": _mean_cos(cos_rows, pick.kind, int(pick["rank"]))}
        for m in METRICS:
            row[f"random_{m}"], row[f"random_{m}_lo"], row[f"random_{m}_hi"] = interval([r[m] for r in per_seed])
        changed = [i for i, t in enumerate(native_texts[a]) if t != base_texts[i]]
        row["native_changed"] = len(changed) / len(prompts)
        for label, outs in (("key", texts), ("random", random_texts)):
            # fidelity where the native key changed the output (elsewhere unsteered text matches it)
            fid = (transfer_fidelity([outs[i] for i in changed], [native_texts[a][i] for i in changed],
                                     target.tokenizer) if changed else {"identical_rate": math.nan,
                                                                        "token_agreement": math.nan})
            row |= {f"{label}_identical_to_native": fid["identical_rate"],
                    f"{label}_token_agreement": fid["token_agreement"],
                    **{f"{label}_{m}": v for m, v in text_measures(outs).items()}}
        row |= {f"native_{m}": v for m, v in text_measures(native_texts[a]).items()}
        summary.append(row)
        samples[pick.kind] = {"key": texts[:3], "native": native_texts[a][:3], "random": random_texts[:3]}
        log(f"{pick.kind}: identical to native {row['key_identical_to_native']:.2f} "
            f"(random {row['random_identical_to_native']:.2f})")
    base = text_measures(base_texts)
    grid.to_csv(out / "grid.csv", index=False)
    pd.DataFrame(cos_rows).to_csv(out / "cosine_to_native.csv", index=False)
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    run |= {"wall_s": round(time.perf_counter() - t0), "unsteered_generation": base,
            "native_moves_first_token": moved, "pick_alpha": alpha,
            "samples": samples, "unsteered_samples": base_texts[:3]}
    (out / "run.json").write_text(json.dumps(run, indent=1))
    return out


def _f(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def direction_section(run_dir: Path) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    s = pd.read_csv(run_dir / "summary.csv")
    grid = pd.read_csv(run_dir / "grid.csv")
    ref = grid[grid.condition != "transferred key"]
    lines = [f"### {run['source']} → {run['target']}", "",
             f"`{run['command']}` ({run['wall_s']} s, {run['threads']} CPU thread(s); key {run['n_key']}, "
             f"alignment {run['n_align']} questions (≤ {run['max_pairs']} pairs), dev {run['n_dev']}, "
             f"ranks {run['ranks']}, α ∈ {{{run['alphas']}}}, {run['seeds']} random seeds, "
             f"{run['n_gen']} SVAMP problems × {run['max_new_tokens']} tokens)", "",
             *(() if "seed" in run else (
                 f"Generated on the first {run['n_gen']} SVAMP test problems, before the split fix: 7 of the 30 "
                 "are `real_pair_data` evaluation problems (a re-run generates on the SVAMP dev part).", "")),
             "References (first token, dev):", "",
             "| condition | α | KL to CoT ↓ | entropy | p(CoT top) ↑ | top-1 agree ↑ |", "|---|---|---|---|---|---|"]
    for _, r in ref.iterrows():
        lines.append(f"| {r.condition} | {r.alpha:g} | " + " | ".join(_f(r[m]) for m in METRICS) + " |")
    lines += ["", f"Share of dev questions whose first token the native key changes, per α: "
              f"{run['native_moves_first_token']}; picks at α = {run['pick_alpha']} (the smallest where "
              "it is ≥ 0.5).", "",
              "Each kind's pick (at that α, the rank closest to the native key's first-token distribution). "
              "Fidelity is measured on the SVAMP problems whose output the native key changed "
              "(share in the column):", "",
              "| data | rank | α | KL to native ↓ | mean cos to native | KL to CoT | entropy | p(CoT top) | "
              "random-mapped KL to CoT [95% CI] | native changed | identical to native: key / random | token agreement: key / random "
              "| degenerate: key / native / random | CoT among non-degenerate: key / native / random "
              "| ≥ 2 arithmetic steps among non-degenerate: key / native / random |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(
            f"| {r.kind} | {r['rank']} | {r.alpha:g} | {_f(r.kl_to_native)} | {_f(r.mean_cos_to_native)} | "
            f"{_f(r.kl_to_cot)} | {_f(r.entropy)} | {_f(r.p_cot_top)} | {_f(r.random_kl_to_cot)} "
            f"[{_f(r.random_kl_to_cot_lo)}, {_f(r.random_kl_to_cot_hi)}] | {_f(r.native_changed)} | "
            f"{_f(r.key_identical_to_native)} / {_f(r.random_identical_to_native)} | "
            f"{_f(r.key_token_agreement)} / {_f(r.random_token_agreement)} | "
            f"{_f(r.key_degenerate)} / {_f(r.native_degenerate)} / {_f(r.random_degenerate)} | "
            f"{_f(r.key_cot_non_degenerate)} / {_f(r.native_cot_non_degenerate)} / {_f(r.random_cot_non_degenerate)} | "
            + " / ".join(_f(r.get(f"{c}_multi_step_non_degenerate")) for c in ("key", "native", "random")) + " |")
    base = run["unsteered_generation"]
    lines += ["", f"Unsteered generation: degenerate {_f(base['degenerate'])}, CoT among non-degenerate "
              f"{_f(base['cot_non_degenerate'])} (≥ 2 arithmetic steps: {_f(base.get('multi_step_non_degenerate'))}).", "",
              "Mean cosine of the mapped key to the native key, per data kind and rank (all target layers):", "",
              "| data | " + " | ".join(f"rank {r}" for r in run["ranks"].split(",")) + " |",
              "|---|" + "---|" * len(run["ranks"].split(","))]
    cos = pd.read_csv(run_dir / "cosine_to_native.csv").groupby(["kind", "rank"]).cosine_to_native.mean()
    for kind in run["kinds"].split(","):
        cells = [_f(cos.get((kind, int(r)), math.nan)) for r in run["ranks"].split(",")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Sample outputs (first SVAMP problems), per kind's pick:", ""]
    for kind, sm in run["samples"].items():
        for label in ("key", "native", "random"):
            lines.append(f"- {kind}, {label}: {json.dumps(sm[label][0][:160])}")
    return "\n".join(lines) + "\n"


def cosine_figure(out: Path) -> Path | None:
    """Per-layer cosine to the native key, one line per data kind (its best rank), both directions."""
    from unlock_lens.plots import cosine_by_layer_figure, save_figure
    frames = []
    for run_dir in sorted(p for p in out.iterdir() if (p / "run.json").exists()):
        c = pd.read_csv(run_dir / "cosine_to_native.csv")
        best = c.groupby(["kind", "rank"]).cosine_to_native.mean().reset_index().sort_values(
            "cosine_to_native").groupby("kind").tail(1)
        keep = c.merge(best[["kind", "rank"]], on=["kind", "rank"])
        keep["direction"] = run_dir.name.replace("_to_", " → ")
        keep["setting"] = "svd k=" + keep["rank"].astype(str)
        frames.append(keep)
    if not frames:
        return None
    fig = cosine_by_layer_figure(pd.concat(frames), title="Mapped key vs the target's native key, "
                                 "per target layer (each data kind at its best rank)")
    paths = save_figure(fig, out / "cosine_to_native", png=False, include_plotlyjs="cdn")  # small to commit
    return paths[0]


def report(args: argparse.Namespace) -> Path:
    runs = sorted(p for p in args.out.iterdir() if (p / "run.json").exists())
    if not runs:
        raise SystemExit(f"no runs in {args.out}: run both directions first")
    cosine_figure(args.out)
    text = ("# Alignment data kinds on the real pair\n\n" + __doc__.split("\n\n", 1)[1].split("\n\n    python")[0]
            + "\n\nFigure: `data_kinds/cosine_to_native.html` (per-layer cosine to the native key, "
            "each kind at its best rank; loads plotly.js from its CDN).\n\n" + "\n".join(direction_section(r) for r in runs))
    return write_keeping_reading(args.md, text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(report(args) if args.report else run_direction(args))


if __name__ == "__main__":
    main()
