"""Protocol-difference study: the authors' protocol, then one difference at a time switched to
unlock_lens's choice, on a real pair, at the first generated token.

For each protocol (``paper``, and ``paper`` with one of prompts / chat / special_tokens /
final_layer / shared_questions switched to the library's choice): extract the key on the source,
align it into the target, and on held-out questions measure, against the target's own
CoT-prompted next-token distribution (the reference):

- KL(reference || condition), the condition's entropy, the probability it gives the
  reference's top token and top-1 agreement (KL alone rewards flattening: never read it alone);
- the mapped key's per-layer cosine to the target's native key (same protocol);

for the unsteered target prompt, the transferred key, the target's native key and random
source directions of the key's norms carried through the same maps (``--seeds``; mean and a
95% t-interval over seeds).

    python -m analysis.protocol_diff --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.protocol_diff --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.protocol_diff --report      # joins both into results/protocol_diff.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from analysis import load_any, write_keeping_reading
from unlock_lens import Steering, Unlock, final_logits, load_dataset
from unlock_lens.diagnostics.distribution_shift import mapped_random_like
from unlock_lens.distributions import entropy, kl_divergence
from unlock_lens.errors import UnlockLensError
from unlock_lens.protocol import PAPER, Protocol

SWITCHES = ("prompts", "chat", "special_tokens", "final_layer", "shared_questions")
RESULTS = Path("analysis/results")
METRICS = ("kl_to_cot", "entropy", "p_cot_top", "top1_agree")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=64, help="key questions (shared with the alignment under "
                   "the paper's protocol; the library's takes another n before them)")
    p.add_argument("--n-eval", type=int, default=48, help="held-out questions (the first of GSM8K-train)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alphas", default="0.02,0.1", help="steering strengths (the paper's default 0.1 "
                   "and a smaller one: at 0.1 these small models' own keys already overshoot)")
    p.add_argument("--seeds", type=int, default=10, help="random-mapped control directions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true", help="only join the runs in --out into --md")
    p.add_argument("--out", type=Path, default=RESULTS / "protocol_diff")
    p.add_argument("--md", type=Path, default=RESULTS / "protocol_diff.md")
    return p.parse_args(argv)


def first_token_metrics(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """Mean over questions of the four first-token measures (see the module docstring)."""
    top = reference.argmax(-1)
    probs = torch.softmax(logits.float(), -1)
    return {
        "kl_to_cot": float(kl_divergence(reference, logits).mean()),
        "entropy": float(entropy(logits).mean()),
        "p_cot_top": float(probs.gather(-1, top[:, None]).mean()),
        "top1_agree": float((logits.argmax(-1) == top).float().mean()),
    }


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    x = torch.tensor(values, dtype=torch.float64)
    mean = float(x.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * x.std() / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def cosines(pack: Any, native: Any) -> list[float]:
    mapped = pack.target_directions()
    return [float(torch.nn.functional.cosine_similarity(mapped[t], native.direction(t), dim=0))
            for t in sorted(mapped)]


def run_protocol(protocol: Protocol, source: Any, target: Any, pool: list[str], eval_qs: list[str],
                 args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[float]]:
    pipe = Unlock(source, target, protocol=protocol, rank=args.rank)
    key_qs, align_qs = protocol.question_sets(pool, args.n, args.n)
    pack = pipe.align(pipe.extract(key_qs), align_qs)
    native = Unlock(target, target, protocol=protocol).extract(key_qs)
    tv = pipe.target_variant
    _, t_unlocked = protocol.formats(target.tokenizer)

    def logits(prompts: list[str], steering: Steering | None = None) -> torch.Tensor:
        return final_logits(target, prompts, steering=steering, special_tokens=tv.special_tokens)

    reference = logits(t_unlocked.render_all(eval_qs, target.tokenizer))
    prompts = tv.prompts(eval_qs)
    rows = [{"alpha": 0.0, "condition": "unsteered", **first_token_metrics(reference, logits(prompts))}]
    for alpha in (float(a) for a in args.alphas.split(",")):
        rows += [
            {"alpha": alpha, "condition": "transferred key",
             **first_token_metrics(reference, logits(prompts, pack.steering(alpha)))},
            {"alpha": alpha, "condition": "native key", **first_token_metrics(
                reference, logits(prompts, Steering(native.directions, alpha=alpha, hook=native.hook)))},
        ]
        per_seed = []
        for seed in range(args.seeds):
            steering = Steering(mapped_random_like(pack, seed), alpha=alpha, hook=pack.key.hook)
            per_seed.append(first_token_metrics(reference, logits(prompts, steering)))
        random_row: dict[str, Any] = {"alpha": alpha, "condition": f"random mapped ({args.seeds} seeds)"}
        for m in METRICS:
            random_row[m], random_row[f"{m}_lo"], random_row[f"{m}_hi"] = interval([r[m] for r in per_seed])
        rows.append(random_row)
    return rows, cosines(pack, native)


def run_direction(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out / f"{args.source}_to_{args.target}"
    out.mkdir(parents=True, exist_ok=True)
    source, target = load_any(args.source), load_any(args.target)
    pool = [p.question for p in load_dataset("gsm8k", "train")]
    eval_qs = pool[: args.n_eval]  # the key (and alignment) questions are the last of the split
    protocols = [("paper", PAPER)] + [(f"paper, {d} → library", PAPER.switched(d)) for d in SWITCHES]
    table, cos_rows = [], []
    for label, protocol in tqdm(protocols, desc="protocols"):
        try:
            rows, cos = run_protocol(protocol, source, target, pool, eval_qs, args)
        except UnlockLensError as err:  # e.g. a tokenizer without a chat template
            table.append({"protocol": label, "condition": "n/a", "note": str(err)})
            continue
        table += [{"protocol": label, **r} for r in rows]
        cos_rows += [{"protocol": label, "target_layer": t, "cosine_to_native": c} for t, c in enumerate(cos)]
        print(f"[{time.perf_counter() - t0:6.0f}s] {label}: mean cos {sum(cos) / len(cos):.3f}", flush=True)
    pd.DataFrame(table).to_csv(out / "first_token.csv", index=False)
    pd.DataFrame(cos_rows).to_csv(out / "cosine_to_native.csv", index=False)
    run = {"source": args.source, "target": args.target, "n": args.n, "n_eval": args.n_eval,
           "rank": args.rank, "alphas": args.alphas, "seeds": args.seeds,
           "command": " ".join(["python -m analysis.protocol_diff", *map(shlex.quote, sys.argv[1:])]),
           "wall_s": round(time.perf_counter() - t0), "threads": args.threads,
           "torch": torch.__version__}
    (out / "run.json").write_text(json.dumps(run, indent=1))
    return out


def _fmt(x: Any, lo: Any = None, hi: Any = None) -> str:
    if isinstance(x, float) and math.isnan(x):
        return ""
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{x:.3f}"
    return f"{x:.3f} [{lo:.3f}, {hi:.3f}]"


def direction_section(run_dir: Path) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    table = pd.read_csv(run_dir / "first_token.csv")
    cos = pd.read_csv(run_dir / "cosine_to_native.csv")
    lines = [f"### {run['source']} → {run['target']}", "",
             f"`{run['command']}` ({run['wall_s']} s on {run['threads']} CPU threads; n = {run['n']} key "
             f"questions, {run['n_eval']} held-out, rank {run['rank']}, α ∈ {{{run['alphas']}}}, "
             f"{run['seeds']} random seeds)", "",
             "| protocol | condition | α | KL to CoT ↓ | entropy | p(CoT top token) ↑ | top-1 agree ↑ |",
             "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        if r["condition"] == "n/a":
            lines.append(f"| {r['protocol']} | n/a: {r['note']} | | | | | |")
            continue
        cells = [_fmt(r[m], r.get(f"{m}_lo"), r.get(f"{m}_hi")) for m in METRICS]
        alpha = "" if r["alpha"] == 0 else f"{r['alpha']:g}"
        lines.append(f"| {r['protocol']} | {r['condition']} | {alpha} | " + " | ".join(cells) + " |")
    lines += ["", "Mapped key's cosine to the target's native key, per target layer:", "",
              "| protocol | mean | first | middle | last |", "|---|---|---|---|---|"]
    for label, g in cos.groupby("protocol", sort=False):
        c = g.sort_values("target_layer")["cosine_to_native"].tolist()
        lines.append(f"| {label} | {sum(c) / len(c):.3f} | {c[0]:.3f} | {c[len(c) // 2]:.3f} | {c[-1]:.3f} |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> Path:
    """Both directions' tables into ``--md``; a ``## Reading`` section already there is kept."""
    runs = sorted(p for p in args.out.iterdir() if (p / "run.json").exists())
    if not runs:
        raise SystemExit(f"no runs in {args.out}: run both directions first")
    text = ("# Protocol differences on the real pair, first generated token\n\n"
            + __doc__.split("\n\n", 1)[1].split("\n\n    python")[0] + "\n\n"
            + "\n".join(direction_section(r) for r in runs))
    return write_keeping_reading(args.md, text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args))
        return
    print(run_direction(args))


if __name__ == "__main__":
    main()
