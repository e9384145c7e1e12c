"""The real pair again, by alignment data: dev-selected, then generated on 200 + 200 problems.

    python -m analysis.real_pair_data --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.real_pair_data --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.real_pair_data --report   # -> analysis/results/real_pair/data_kinds.md

One direction per run (all method logic is library calls; this script wires them):

1. **Key** (library protocol: the source's direct vs CoT prompt) and the target's own key
   (*native key*) on ``--n-key`` GSM8K-train questions; maps into the target fitted on
   ``--n-align`` other GSM8K-train questions in each model's locked format, for each data kind
   (``last``: the paper's; ``tokens+last``: token pairs at shared character ends plus the last
   token, streamed Gram statistics, at most ``--max-pairs`` pairs).
2. **First-token grid on dev** (``--n-dev`` SVAMP + ``--n-dev`` MultiArith problems, disjoint
   from the evaluation problems): data kind x method x rank x alpha, each scored from one cached
   prefix against the target's CoT-prompted distribution (KL, entropy, p(CoT top), top-1
   agreement) and by the mapped key's per-layer cosine to the native key. The grid only
   *prunes*: per data kind and alpha, the (method, rank) with the lowest KL among those that
   do not lower p(CoT top) below the unsteered prompt's (no flattening).
3. **Selection on dev by generated text**: each kind's pruned candidates (one per alpha) and
   the native key at every alpha are generated on the dev problems (``--dev-tokens``); the
   pick is the alpha with the largest *healthy CoT share* (outputs that are not degenerate and
   show working), ties to the smaller alpha. Random source directions of the key's per-layer
   norms, carried through the same maps (``--seeds``), give the first-token control with 95%
   t-intervals at each pick.
4. **Evaluation** on ``--n-eval`` SVAMP and ``--n-eval`` MultiArith problems: direct, the
   native key, each data kind's key, each kind's random-mapped control (random source
   directions of the key's per-layer norms, seed s on every third problem, through that kind's
   picked maps at its alpha) and the CoT prompt; greedy,
   ``--max-new-tokens``, the library's stop strings, loops stopped. Per condition: accuracy
   (Wilson 95%), degenerate rate, CoT-format rate among non-degenerate outputs, the stricter
   rate of outputs with two or more arithmetic steps ``a op b = c`` among them (Wilson 95%;
   reported, not used for selection), the share that use a sequence word (first / then /
   next / step; added post hoc, after reading the outputs), mean length, and transfer
   fidelity against the native key's outputs. Conditions run in that order and each finished
   one is kept (``eval_<condition>.jsonl``), so a re-run resumes; ``--reuse-dev --conditions
   ...`` runs chosen conditions from the dev picks already made (e.g. one process each), and
   ``--summarize`` joins them.

Files in ``--out/<source>_to_<target>/``: ``run.json``, ``grid.csv``, ``cosine_to_native.csv``,
``dev_generation.csv``, ``picks.csv``, ``summary.csv`` and the per-row ``eval_*.jsonl``
(not committed: they quote the evaluation sets).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis import MapBank, load_any, open_direction
from analysis.data_kinds import cosines
from analysis.protocol_diff import METRICS, first_token_metrics, interval
from analysis.real_pair import EVAL_PARTS  # the same dev / eval problems as the first runs
from unlock_lens import Steering, Unlock
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.controls import random_like
from unlock_lens.diagnostics.cached_scoring import prefix_cache, score_last_position
from unlock_lens.diagnostics.fidelity import transfer_fidelity
from unlock_lens.evaluate import load_dataset, split_problems
from unlock_lens.evaluate.datasets import Problem
from unlock_lens.evaluate.results import DEGENERATE_KINDS, arithmetic_steps, behaviour, degenerate
from unlock_lens.evaluate.runner import Decoding, check_disjoint, run_condition
from unlock_lens.evaluate.stats import wilson_interval

RESULTS = Path("analysis/results")
KINDS = ("last", "tokens+last")
DATASETS = ("svamp", "multiarith")
# Added after reading the outputs (post hoc: reported, never used for selection). Gemma's own key
# opens its answers with "First, ..."; the shows-working heuristic does not see that signature.
SEQUENCE_WORDS = re.compile(r"\b(first|then|next|step)\b", re.IGNORECASE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n-key", type=int, default=64)
    p.add_argument("--n-align", type=int, default=64)
    p.add_argument("--n-dev", type=int, default=16, help="dev problems per evaluation set")
    p.add_argument("--n-eval", type=int, default=200, help="evaluation problems per set")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--methods", default="svd,procrustes,cca")
    p.add_argument("--ranks", default="16,64,256")
    p.add_argument("--alphas", default="0.01,0.02,0.05,0.1",
                   help="0.01 and 0.02 added to the paper's grid: at these sizes 0.1 already overshoots")
    p.add_argument("--max-pairs", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=10, help="random-mapped seeds for the first-token control")
    p.add_argument("--dev-tokens", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="evaluation-set split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true")
    p.add_argument("--summarize", action="store_true",
                   help="only rebuild summary.csv / run.json from the finished eval_*.jsonl")
    p.add_argument("--reuse-dev", action="store_true",
                   help="take the dev picks from an earlier run's picks.csv (skips the grid and dev generation)")
    p.add_argument("--conditions", default=None,
                   help="evaluate only these conditions (comma-separated: direct, native-key, a data kind, "
                        "'random-mapped <kind>', cot-prompt), e.g. in parallel processes; join with --summarize")
    p.add_argument("--out", type=Path, default=RESULTS / "real_pair_data")
    p.add_argument("--md", type=Path, default=RESULTS / "real_pair" / "data_kinds.md")
    return p.parse_args(argv)


def _nums(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def problem_sets(args: argparse.Namespace, gsm_questions: list[str]) -> tuple[list[Problem], list[Problem]]:
    """Dev and evaluation problems (SVAMP + MultiArith), disjoint from each other and from GSM8K."""
    dev, held = [], []
    for name in DATASETS:
        parts = split_problems(load_dataset(name, "test"), EVAL_PARTS, seed=args.seed)
        dev += parts["dev"][: args.n_dev]
        held += parts["eval"][: args.n_eval]
    check_disjoint(dev, held, "dev and eval problems")
    gsm = [Problem(id=f"gsm8k-train-{i}", question=q, answer="", dataset="gsm8k", split="train")
           for i, q in enumerate(gsm_questions)]
    check_disjoint(gsm, dev + held, "GSM8K key/align questions and the dev/eval problems")
    return dev, held


def healthy_cot(rows: list[dict[str, Any]]) -> float:
    """Share of outputs that are not degenerate and show working (the dev criterion)."""
    return sum(not degenerate(r["output"]) and r["cot_format"] for r in rows) / len(rows)


def prune(grid: pd.DataFrame, unsteered_p_cot_top: float) -> pd.DataFrame:
    """Per data kind and alpha, the (method, rank) with the lowest KL to the CoT prompt among the
    cells that keep p(CoT top) at least at the unsteered prompt's (``keeps_p_cot_top``); where
    no cell does, the lowest-KL cell all the same, flagged, so every kind reaches generation."""
    keyed = grid[grid.condition == "transferred key"].assign(
        keeps_p_cot_top=lambda g: g.p_cot_top >= unsteered_p_cot_top)
    ordered = keyed.sort_values(["keeps_p_cot_top", "kl_to_cot"], ascending=[False, True])
    return ordered.groupby(["kind", "alpha"], sort=False).head(1)


def run_direction(args: argparse.Namespace) -> Path:
    wanted = conditions(args)
    d = open_direction(args)
    out, t0, log, pipe, target = d.out, d.t0, d.log, d.pipe, d.pipe.target
    key_qs, align_qs = d.key_qs, d.align_qs
    dev, held = problem_sets(args, key_qs + align_qs)
    key = pipe.extract(key_qs)
    native = Unlock(target, target, protocol="library").extract(key_qs)
    bank = MapBank(pipe.locked, pipe.target_variant, align_qs,
                   LayerPairing.by_depth(key.source.n_layers, int(target.cfg.n_layers)), args.max_pairs)
    log("key and native key ready")
    if args.reuse_dev:
        if not (out / "picks.csv").is_file():
            raise SystemExit(f"--reuse-dev: {out / 'picks.csv'} is missing; run the direction once without it")
        picks = {str(r["condition"]): r for _, r in pd.read_csv(out / "picks.csv").iterrows()}
        log("dev picks reused from picks.csv:", {k: (v.get("method"), v.get("rank"), v.alpha) for k, v in picks.items()})
    else:
        picks = select_on_dev(args, out, log, pipe, key, native, dev, bank)
    results = evaluate(args, out, log, pipe, key, native, held, picks, bank, wanted)
    if wanted is None:
        write_summary(out, results, picks, held, target.tokenizer, args, time.perf_counter() - t0)
    log("done" if wanted is None else f"done: {', '.join(results)}; join with --summarize")
    return out


def all_conditions(args: argparse.Namespace) -> list[str]:
    """The evaluation conditions in run order: references, each kind's key, each kind's
    random-mapped control (random source directions through that kind's picked maps)."""
    kinds = args.kinds.split(",")
    return ["direct", "native key", *kinds, *(f"random-mapped {k}" for k in kinds), "cot-prompt"]


def pick_for(picks: dict[str, Any], name: str) -> Any:
    """The dev pick a condition runs at (a random-mapped control: its data kind's); None if none."""
    return picks.get(name.removeprefix("random-mapped "))


def eval_path(out: Path, name: str) -> Path:
    return out / f"eval_{name.replace(' ', '_').replace('+', '_')}.jsonl"


def conditions(args: argparse.Namespace) -> list[str] | None:
    """The evaluation conditions ``--conditions`` names (None: all), checked against the known ones."""
    if args.conditions is None:
        return None
    known = all_conditions(args)
    wanted = [c.strip().replace("native-key", "native key") for c in args.conditions.split(",") if c.strip()]
    if unknown := [c for c in wanted if c not in known]:
        raise SystemExit(f"--conditions: unknown {unknown}; choose from {', '.join(known)} (native key as native-key)")
    return wanted


def generate_rows(pipe: Unlock, problems: list[Problem], prompts: list[str], steering: Steering | None,
                  condition: str, dec: Decoding, **extra: Any) -> list[dict[str, Any]]:
    """Evaluation rows of the pipe's target on ``prompts``, decoded as ``dec`` says."""
    tv = pipe.target_variant
    return run_condition(tv.model, problems, prompts, condition=condition, steering=steering, decoding=dec,
                         special_tokens=tv.special_tokens, **extra)


def random_mapped_rows(pipe: Unlock, key: Any, fitted: Any, problems: list[Problem], prompts: list[str],
                       alpha: float, dec: Decoding, seeds: int = 3) -> list[dict[str, Any]]:
    """The random-mapped control: random source directions of the key's per-layer norms
    (seed s on every ``seeds``-th problem from s) carried through the maps ``fitted``."""
    rows: list[dict[str, Any]] = [{}] * len(problems)
    for s in range(seeds):
        idx = list(range(s, len(problems), seeds))
        rnd = map_directions(random_like({layer: key.direction(layer) for layer in key.layers}, s), fitted)
        part = generate_rows(pipe, [problems[i] for i in idx], [prompts[i] for i in idx], Steering(rnd, alpha=alpha),
                    "random", dec, alpha=alpha, seed=s)
        for i, r in zip(idx, part, strict=True):
            rows[i] = r
    return rows


def select_on_dev(args: argparse.Namespace, out: Path, log: Any, pipe: Unlock, key: Any, native: Any,
                  dev: list[Problem], bank: MapBank) -> dict[str, pd.Series]:
    """Stages 2 and 3: the first-token grid on dev, its pruning, generation on dev, the picks
    (written to ``grid.csv``, ``cosine_to_native.csv``, ``dev_generation.csv``, ``picks.csv``)."""
    tv = pipe.target_variant
    target = tv.model
    _, t_cot = pipe.protocol.formats(target.tokenizer)
    dev_qs = [p.question for p in dev]
    reference = score_last_position(target, prefix_cache(target, t_cot.render_all(dev_qs, target.tokenizer)))
    cache = prefix_cache(target, tv.prompts(dev_qs))
    unsteered = first_token_metrics(reference, score_last_position(target, cache))
    alphas, ranks = _nums(args.alphas, float), _nums(args.ranks, int)

    # ---- 2. first-token grid ----
    rows: list[dict[str, Any]] = [{"kind": "-", "condition": "unsteered", "alpha": 0.0, **unsteered}]
    for a in alphas:
        rows.append({"kind": "-", "condition": "native key", "alpha": a,
                     **first_token_metrics(reference, score_last_position(target, cache, Steering(native.directions, alpha=a)))})
    cos_rows = []
    for kind in args.kinds.split(","):
        n_fit = bank.n_fit(kind)
        for method in args.methods.split(","):
            for rank in ranks:
                if rank > min(n_fit, key.directions.shape[-1], int(target.cfg.d_model)):
                    continue
                dirs = map_directions(key, bank(kind, method, rank))
                per_layer = cosines(dirs, native)
                mean_cos = sum(per_layer) / len(per_layer)
                cos_rows += [{"kind": kind, "method": method, "rank": rank, "target_layer": t, "cosine_to_native": c}
                             for t, c in zip(sorted(dirs), per_layer, strict=True)]
                for a in alphas:
                    rows.append({"kind": kind, "condition": "transferred key", "method": method, "rank": rank,
                                 "alpha": a, "mean_cos_to_native": mean_cos,
                                 **first_token_metrics(reference, score_last_position(target, cache, Steering(dirs, alpha=a)))})
        log(f"{kind}: {len(args.methods.split(','))} methods x ranks x alphas scored (n_fit {n_fit})")
    grid = pd.DataFrame(rows)
    grid.to_csv(out / "grid.csv", index=False)
    pd.DataFrame(cos_rows).to_csv(out / "cosine_to_native.csv", index=False)

    # ---- 3. prune, then select on dev by generated text ----
    decoding = pipe.protocol.decoding_for()
    dev_decoding = Decoding(max_new_tokens=args.dev_tokens, stop_strings=tuple(decoding.stop_strings),
                            batch_size=args.batch_size, stop_loops=True)
    dev_prompts = tv.prompts(dev_qs)

    gen = functools.partial(generate_rows, pipe)

    candidates = prune(grid, unsteered["p_cot_top"])
    dev_rows = [{"condition": "direct", "kind": "-", "alpha": 0.0,
                 **behaviour(b := gen(dev, dev_prompts, None, "direct", dev_decoding)), "healthy_cot": healthy_cot(b)}]
    for a in alphas:
        b = gen(dev, dev_prompts, Steering(native.directions, alpha=a), "native-key", dev_decoding)
        dev_rows.append({"condition": "native key", "kind": "-", "alpha": a, **behaviour(b), "healthy_cot": healthy_cot(b)})
    for _, c in candidates.iterrows():
        dirs = map_directions(key, bank(c.kind, c.method, int(c["rank"])))
        b = gen(dev, dev_prompts, Steering(dirs, alpha=c.alpha), c.kind, dev_decoding)
        dev_rows.append({"condition": "transferred key", "kind": c.kind, "method": c.method, "rank": int(c["rank"]),
                         "alpha": c.alpha, "keeps_p_cot_top": c.keeps_p_cot_top, **behaviour(b),
                         "healthy_cot": healthy_cot(b)})
    log("dev generation done")
    dev_gen = pd.DataFrame(dev_rows)
    dev_gen.to_csv(out / "dev_generation.csv", index=False)

    def best(frame: pd.DataFrame) -> pd.Series:
        return frame.sort_values(["healthy_cot", "alpha"], ascending=[False, True]).iloc[0]

    picks = {"native key": best(dev_gen[dev_gen.condition == "native key"])}
    for kind in args.kinds.split(","):
        if (dev_gen.kind == kind).any():
            picks[kind] = best(dev_gen[dev_gen.kind == kind])
    pick_rows = []
    for name, p in picks.items():
        row = {"condition": name, "method": p.get("method"), "rank": p.get("rank"), "alpha": p.alpha,
               "dev_healthy_cot": p.healthy_cot}
        if name != "native key":
            fitted = bank(name, p.method, int(p["rank"]))
            per_seed = [first_token_metrics(reference, score_last_position(
                target, cache, Steering(map_directions(random_like({layer: key.direction(layer) for layer in key.layers}, s),
                                                       fitted), alpha=p.alpha)))
                for s in range(args.seeds)]
            g = grid[(grid.kind == name) & (grid.method == p.method) & (grid["rank"] == p["rank"]) & (grid.alpha == p.alpha)].iloc[0]
            row |= {m: g[m] for m in METRICS} | {"mean_cos_to_native": g.mean_cos_to_native}
            for m in METRICS:
                row[f"random_{m}"], row[f"random_{m}_lo"], row[f"random_{m}_hi"] = interval([r[m] for r in per_seed])
        else:
            g = grid[(grid.condition == "native key") & (grid.alpha == p.alpha)].iloc[0]
            row |= {m: g[m] for m in METRICS}
        pick_rows.append(row)
    pd.DataFrame(pick_rows).to_csv(out / "picks.csv", index=False)
    log("picks:", {k: (v.get("method"), v.get("rank"), v.alpha) for k, v in picks.items()})

    return picks


def _pick_config(pick: pd.Series | None) -> dict[str, Any] | None:
    """What identifies a pick (from dev generation or from ``picks.csv``): method, rank, alpha."""
    if pick is None:
        return None
    method, rank = pick.get("method"), pick.get("rank")
    return {"method": None if pd.isna(method) else str(method), "rank": None if pd.isna(rank) else int(rank),
            "alpha": float(pick["alpha"])}


def evaluate(args: argparse.Namespace, out: Path, log: Any, pipe: Unlock, key: Any, native: Any,
             held: list[Problem], picks: dict[str, pd.Series], bank: MapBank,
             wanted: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    """Stage 4: each condition (all, or those ``wanted``) on the evaluation problems; a condition
    finished for the same pick, decoding and problems is read back from its ``eval_*.jsonl``."""
    tv = pipe.target_variant
    target = tv.model
    _, t_cot = pipe.protocol.formats(target.tokenizer)
    decoding = pipe.protocol.decoding_for()
    dec = Decoding(max_new_tokens=args.max_new_tokens, stop_strings=tuple(decoding.stop_strings),
                   batch_size=args.batch_size, stop_loops=True)
    prompts = tv.prompts([p.question for p in held])
    cot_prompts = t_cot.render_all([p.question for p in held], target.tokenizer)

    gen = functools.partial(generate_rows, pipe)

    def evaluated(name: str, make: Any) -> list[dict[str, Any]]:
        path = eval_path(out, name)
        pick = pick_for(picks, name)
        config = json.dumps({"pick": _pick_config(pick), "decoding": dec.to_dict(),
                             "problems": [p.id for p in held]}, sort_keys=True)
        meta = path.with_suffix(".config.json")
        if path.is_file() and meta.is_file() and meta.read_text() == config:
            return [json.loads(line) for line in path.read_text().splitlines()]
        rows = make()
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta.write_text(config)
        log(f"eval {name}: {behaviour(rows)}")
        return rows

    def steered_dirs(name: str) -> dict[int, torch.Tensor]:
        p = picks[name]
        return map_directions(key, bank(name, p.method, int(p["rank"])))

    def random_rows(kind: str) -> list[dict[str, Any]]:
        p = picks[kind]
        return random_mapped_rows(pipe, key, bank(kind, p.method, int(p["rank"])), held, prompts, p.alpha, dec)

    makers: dict[str, Any] = {
        "direct": lambda: gen(held, prompts, None, "direct", dec),
        "native key": lambda: gen(held, prompts, Steering(native.directions, alpha=picks["native key"].alpha),
                                  "native-key", dec, alpha=picks["native key"].alpha)}
    for kind in args.kinds.split(","):
        if kind in picks:
            makers[kind] = lambda kind=kind: gen(held, prompts, Steering(steered_dirs(kind), alpha=picks[kind].alpha),
                                                 "steered", dec, alpha=picks[kind].alpha)
    for kind in args.kinds.split(","):
        if kind in picks:
            makers[f"random-mapped {kind}"] = functools.partial(random_rows, kind)
    makers["cot-prompt"] = lambda: gen(held, cot_prompts, None, "cot-prompt", dec)
    if wanted is not None and (missing := [c for c in wanted if c not in makers]):
        raise SystemExit(f"--conditions: {missing} has no dev pick in this direction")
    return {name: evaluated(name, make) for name, make in makers.items() if wanted is None or name in wanted}


def write_summary(out: Path, results: dict[str, list[dict[str, Any]]], picks: dict[str, Any],
                  held: list[Problem], tokenizer: Any, args: argparse.Namespace, wall_s: float) -> None:
    """``summary.csv`` (per condition and set: behaviour, accuracy with its Wilson interval,
    fidelity to the native key's outputs) and ``run.json``."""
    native_out = [r["output"] for r in results["native key"]]
    direct_out = [r["output"] for r in results["direct"]]
    changed = [i for i, (n, d) in enumerate(zip(native_out, direct_out, strict=True)) if n != d]
    summary, samples = [], {}
    for name, rs in results.items():
        for ds in (*DATASETS, "all"):
            sub = [r for r, p in zip(rs, held, strict=True) if ds in ("all", p.dataset)]
            b = behaviour(sub)
            lo, hi = wilson_interval(sum(bool(r["correct"]) for r in sub), len(sub))
            healthy = [r for r in sub if not degenerate(r["output"])]
            c_lo, c_hi = (wilson_interval(sum(bool(r["cot_format"]) for r in healthy), len(healthy))
                          if healthy else (math.nan, math.nan))
            m_lo, m_hi = (wilson_interval(sum(arithmetic_steps(r["output"]) >= 2 for r in healthy), len(healthy))
                          if healthy else (math.nan, math.nan))
            pick = pick_for(picks, name)
            row = {"condition": name, "dataset": ds, "alpha": None if pick is None else pick["alpha"],
                   **b, "sequence_word_rate_non_degenerate": (
                       sum(bool(SEQUENCE_WORDS.search(r["output"])) for r in healthy) / len(healthy)
                       if healthy else math.nan),
                   "acc_lo": lo, "acc_hi": hi, "cot_lo": c_lo, "cot_hi": c_hi,
                   "multi_step_lo": m_lo, "multi_step_hi": m_hi}
            if ds == "all" and name not in ("native key", "direct", "cot-prompt") and changed:
                fid = transfer_fidelity([rs[i]["output"] for i in changed], [native_out[i] for i in changed],
                                        tokenizer)
                row |= {"identical_to_native": fid["identical_rate"], "token_agreement": fid["token_agreement"]}
            summary.append(row)
        samples[name] = [r["output"][:200] for r in rs[:4]]
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    run = {k: v for k, v in vars(args).items() if k not in ("out", "md", "report", "summarize", "reuse_dev", "conditions")}
    argv = [a for a in sys.argv[1:] if a != "--summarize"]  # the command that runs the whole direction
    run |= {"command": " ".join(["python -m analysis.real_pair_data", *map(shlex.quote, argv)]),
            "wall_s": None if math.isnan(wall_s) else round(wall_s), "native_changed": len(changed) / len(held),
            "samples": samples, "sample_questions": [p.id for p in held[:4]],
            "torch": torch.__version__, "n_eval_total": len(held)}
    (out / "run.json").write_text(json.dumps(run, indent=1))


def summarize_finished(args: argparse.Namespace) -> Path:
    """``--summarize``: the summary of a direction from its finished ``eval_*.jsonl`` (e.g. when
    conditions were run as separate processes), with the dev picks of its ``picks.csv``."""
    out = args.out / f"{Path(args.source).name}_to_{Path(args.target).name}"
    picks = {r["condition"]: r for _, r in pd.read_csv(out / "picks.csv").iterrows()}
    results = {}
    for name in all_conditions(args):
        if (path := eval_path(out, name)).is_file():
            results[name] = [json.loads(line) for line in path.read_text().splitlines()]
    pool = [p.question for p in load_dataset("gsm8k", "train")]
    _, held = problem_sets(args, pool[:0])
    if {"direct", "native key"} - set(results):
        raise SystemExit(f"{out}: the direct and native-key conditions must be finished to summarise")
    for name, rows in results.items():
        if [r["problem_id"] for r in rows] != [p.id for p in held]:
            raise SystemExit(f"{out}: eval_{name} does not cover the evaluation problems in order")
    wall = json.loads((out / "run.json").read_text()).get("wall_s") if (out / "run.json").exists() else None
    wall = math.nan if wall is None else wall
    write_summary(out, results, picks, held, load_any(args.target).tokenizer, args, wall)
    return out


# ---- report ---------------------------------------------------------------------------------


def _f(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec)


def direction_section(run_dir: Path) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    grid = pd.read_csv(run_dir / "grid.csv")
    picks = pd.read_csv(run_dir / "picks.csv")
    dev_gen = pd.read_csv(run_dir / "dev_generation.csv")
    s = pd.read_csv(run_dir / "summary.csv")
    lines = [f"### {run['source']} → {run['target']}", "",
             f"`{run['command']}` ({'wall time not recorded' if run['wall_s'] is None else str(run['wall_s']) + ' s'}, "
             f"{run['threads']} CPU thread(s) per process; key {run['n_key']}, "
             f"alignment {run['n_align']} questions (≤ {run['max_pairs']} token pairs), dev {2 * run['n_dev']} "
             f"problems, methods {run['methods']}, ranks {run['ranks']}, α ∈ {{{run['alphas']}}}, "
             f"{run['seeds']} random seeds on dev; evaluation {run['n_eval_total']} problems × "
             f"{run['max_new_tokens']} tokens)", "",
             "**First-token grid on dev** (best (method, rank) per data kind and α among those that do not "
             "lower p(CoT top); † none does, the lowest KL is shown; lower KL is closer to the CoT prompt):", "",
             "| data | α | method | rank | KL to CoT | entropy | p(CoT top) | top-1 | mean cos to native |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = grid[grid.condition != "transferred key"]
    for _, r in ref.iterrows():
        lines.append(f"| {r.condition} | {r.alpha:g} | | | " + " | ".join(_f(r[m]) for m in METRICS) + " | |")
    keyed = grid[grid.condition == "transferred key"]
    unsteered_p = float(ref[ref.condition == "unsteered"].p_cot_top.iloc[0])
    for _, r in prune(grid, unsteered_p).sort_values(["kind", "alpha"]).iterrows():
        flag = "" if r.keeps_p_cot_top else " †"
        lines.append(f"| {r.kind}{flag} | {r.alpha:g} | {r.method} | {int(r['rank'])} | "
                     + " | ".join(_f(r[m]) for m in METRICS) + f" | {_f(r.mean_cos_to_native)} |")
    lines += ["", "Mean cosine to the native key over all target layers, best over methods, per rank:", "",
              "| data | " + " | ".join(f"rank {r}" for r in run["ranks"].split(",")) + " |",
              "|---|" + "---|" * len(run["ranks"].split(","))]
    cos = keyed.groupby(["kind", "rank"]).mean_cos_to_native.max()
    for kind in run["kinds"].split(","):
        lines.append(f"| {kind} | " + " | ".join(_f(cos.get((kind, int(r)), math.nan)) for r in run["ranks"].split(",")) + " |")
    lines += ["", "**Selection on dev by generated text** (healthy CoT = not degenerate and shows working):", "",
              "| condition | data | method | rank | α | healthy CoT | degenerate | CoT among non-degenerate | "
              "≥ 2 arithmetic steps among non-degenerate | mean tokens |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in dev_gen.iterrows():
        rank = "" if pd.isna(r.get("rank")) else int(r["rank"])
        lines.append(f"| {r.condition} | {r.kind} | {r.get('method', '') if not pd.isna(r.get('method')) else ''} | {rank} | "
                     f"{r.alpha:g} | {_f(r.healthy_cot)} | {_f(r.degenerate_rate)} | {_f(r.cot_rate_non_degenerate)} | "
                     f"{_f(r.get('multi_step_rate_non_degenerate'))} | {_f(r.mean_tokens, '.1f')} |")
    lines += ["", "Picks, with the first-token random-mapped control (mean [95% CI] over seeds):", "",
              "| pick | method | rank | α | KL to CoT | random KL [CI] | p(CoT top) | random p(CoT top) [CI] |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in picks.iterrows():
        rnd = (f"{_f(r.get('random_kl_to_cot'))} [{_f(r.get('random_kl_to_cot_lo'))}, {_f(r.get('random_kl_to_cot_hi'))}]"
               if "random_kl_to_cot" in r and not pd.isna(r.get("random_kl_to_cot")) else "")
        rndp = (f"{_f(r.get('random_p_cot_top'))} [{_f(r.get('random_p_cot_top_lo'))}, {_f(r.get('random_p_cot_top_hi'))}]"
                if rnd else "")
        rank = "" if pd.isna(r["rank"]) else int(r["rank"])
        method = "" if pd.isna(r["method"]) else r["method"]
        lines.append(f"| {r.condition} | {method} | {rank} | {r.alpha:g} | {_f(r.kl_to_cot)} | {rnd} | "
                     f"{_f(r.p_cot_top)} | {rndp} |")
    lines += ["", f"**Evaluation** ({run['n_eval']} SVAMP + {run['n_eval']} MultiArith; fidelity on the "
              f"{run['native_changed']:.0%} of problems whose output the native key changed):", "",
              "| condition | set | α | accuracy [95% CI] | degenerate | blank / cut-by-stop / near-loop / loop | "
              "CoT among non-degenerate [95% CI] | "
              "≥ 2 arithmetic steps among non-degenerate [95% CI] | sequence words (post hoc) | mean tokens | "
              "identical to native | token agreement |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {r.condition} | {r.dataset} | {_f(r.alpha, 'g')} | {r.accuracy:.1%} [{r.acc_lo:.1%}, {r.acc_hi:.1%}] | "
                     f"{_f(r.degenerate_rate)} | {degenerate_kinds_cell(r)} | "
                     f"{_f(r.cot_rate_non_degenerate)} [{_f(r.cot_lo)}, {_f(r.cot_hi)}] | "
                     f"{_f(r.multi_step_rate_non_degenerate)} [{_f(r.multi_step_lo)}, {_f(r.multi_step_hi)}] | "
                     f"{_f(r.sequence_word_rate_non_degenerate)} | "
                     f"{_f(r.mean_tokens, '.1f')} | "
                     f"{_f(r.get('identical_to_native'))} | {_f(r.get('token_agreement'))} |")
    lines += ["", "First outputs per condition (the same evaluation problems):", ""]
    for name, outs in run["samples"].items():
        lines.append(f"- {name}: " + " · ".join(json.dumps(o[:120]) for o in outs[:2]))
    return "\n".join(lines) + "\n"


def degenerate_kinds_cell(row: pd.Series) -> str:
    """Each degenerate kind's rate (``behaviour``'s ``<kind>_rate``); empty for summaries written
    before the kinds were told apart."""
    rates = [row.get(f"{kind.replace('-', '_')}_rate") for kind in DEGENERATE_KINDS]
    return "" if any(r is None or pd.isna(r) for r in rates) else " / ".join(_f(r) for r in rates)


def cosine_figure(runs: list[Path], path: Path) -> Path:
    """Per-layer cosine to the native key of each data kind's evaluated pick, both directions."""
    from unlock_lens.plots import cosine_by_layer_figure, save_figure
    frames = []
    for run_dir in runs:
        c = pd.read_csv(run_dir / "cosine_to_native.csv")
        for _, p in pd.read_csv(run_dir / "picks.csv").dropna(subset=["method"]).iterrows():
            keep = c[(c.kind == p.condition) & (c.method == p.method) & (c["rank"] == p["rank"])].copy()
            keep["direction"] = run_dir.name.replace("_to_", " → ")
            keep["setting"] = f"{p.method} k={int(p['rank'])}"
            frames.append(keep)
    fig = cosine_by_layer_figure(pd.concat(frames), title="Mapped key vs the target's native key, per "
                                 "target layer (each data kind's dev-selected map)")
    return save_figure(fig, path, png=False, include_plotlyjs="cdn")[0]  # small to commit


def report(args: argparse.Namespace) -> Path:
    runs = sorted(p for p in args.out.iterdir() if (p / "summary.csv").exists())
    if not runs:
        raise SystemExit(f"no finished runs in {args.out}: run both directions first")
    head = ("## The real pair by alignment data (issue 15)\n\n"
            + __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].split("\n\nFiles in")[0] + "\n\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    figure = cosine_figure(runs, args.md.with_name("data_kinds_cosine"))
    head += (f"Figure: [{figure.name}](real_pair/{figure.name}) (per-layer cosine of each data kind's "
             "dev-selected map to the native key; loads plotly.js from its CDN).\n\n")
    args.md.write_text(head + "\n".join(direction_section(r) for r in runs))
    return args.md


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args))
    else:
        print(summarize_finished(args) if args.summarize else run_direction(args))


if __name__ == "__main__":
    main()
