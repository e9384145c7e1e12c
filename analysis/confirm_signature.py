"""Confirm, on problems never looked at, the signature seen in the real-pair study's outputs.

    python -m analysis.confirm_signature    # -> analysis/results/real_pair/signature.md

Hypothesis, written down before this run (2026-11-30), from ``real_pair_data``'s SmolLM2 →
Gemma evaluation, where it was noticed after reading the outputs: the dev-selected
``tokens+last`` key makes Gemma-3-270M use a sequence word (first / then / next / step) far
more often than random source directions carried through the same maps at the same alpha
(96% against 1.2% there). Here it is tested once, with no choice left open: the dev picks of
``analysis/results/real_pair_data/<source>_to_<target>/picks.csv`` as they are, ``--n``
ASDiv test problems (a set the study never used), greedy, ``--max-new-tokens`` tokens. Conditions:
direct, the native key at its picked alpha, the transferred key, and the random-mapped
control (seed s on every third problem). Reported per condition: the share of outputs with a
sequence word (all outputs, so that conditions stay paired by problem) with its Wilson 95%
interval, the degenerate rate, the CoT-format rate among non-degenerate outputs; and the
key-minus-control difference with a 95% paired-bootstrap interval and the exact McNemar p.
The hypothesis holds if that interval lies above 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from analysis import MapBank, load_any
from analysis.real_pair_data import SEQUENCE_WORDS, generate_rows, random_mapped_rows
from unlock_lens import Steering, Unlock
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.evaluate import load_dataset
from unlock_lens.evaluate.datasets import Problem
from unlock_lens.evaluate.results import behaviour
from unlock_lens.evaluate.runner import Decoding, check_disjoint
from unlock_lens.evaluate.stats import mcnemar_exact, paired_bootstrap_diff, wilson_interval

RESULTS = Path("analysis/results")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--kind", default="tokens+last")
    p.add_argument("--n", type=int, default=120, help="ASDiv test problems (the first n)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=Path, default=RESULTS / "real_pair_data")
    p.add_argument("--md", type=Path, default=RESULTS / "real_pair" / "signature.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    run_dir = args.runs / f"{Path(args.source).name}_to_{Path(args.target).name}"
    if not (run_dir / "picks.csv").is_file() or not (run_dir / "run.json").is_file():
        raise SystemExit(f"{run_dir}: no picks.csv / run.json; run `python -m analysis.real_pair_data --source "
                         f"{args.source} --target {args.target}` first (the confirmation reuses its dev picks)")
    picks = {str(r["condition"]): r for _, r in pd.read_csv(run_dir / "picks.csv").iterrows()}
    if args.kind not in picks or "native key" not in picks:
        raise SystemExit(f"{run_dir / 'picks.csv'} has no pick for {args.kind!r} (picks: {', '.join(picks)})")
    run = pd.read_json(run_dir / "run.json", typ="series")
    source, target = load_any(args.source), load_any(args.target)
    pipe = Unlock(source, target, protocol="library")
    pool = [q.question for q in load_dataset("gsm8k", "train")]
    key_qs, align_qs = pipe.protocol.question_sets(pool, int(run["n_key"]), int(run["n_align"]))
    problems = load_dataset("asdiv", "test")[: args.n]
    check_disjoint([Problem(id=f"gsm8k-train-{i}", question=q, answer="", dataset="gsm8k", split="train")
                    for i, q in enumerate(key_qs + align_qs)], problems, "key/align questions and ASDiv")
    key = pipe.extract(key_qs)
    native = Unlock(target, target, protocol="library").extract(key_qs)
    bank = MapBank(pipe.locked, pipe.target_variant, align_qs,
                   LayerPairing.by_depth(key.source.n_layers, int(target.cfg.n_layers)), int(run["max_pairs"]))
    pick = picks[args.kind]
    fitted = bank(args.kind, pick.method, int(pick["rank"]))
    tv = pipe.target_variant
    prompts = tv.prompts([q.question for q in problems])
    dec = Decoding(max_new_tokens=args.max_new_tokens, stop_strings=tuple(pipe.protocol.decoding_for().stop_strings),
                   batch_size=16, stop_loops=True)
    alpha, native_alpha = float(pick.alpha), float(picks["native key"].alpha)

    steered = Steering(map_directions(key, fitted), alpha=alpha)
    results = {
        "direct": generate_rows(pipe, problems, prompts, None, "direct", dec),
        f"native key (α {native_alpha:g})": generate_rows(
            pipe, problems, prompts, Steering(native.directions, alpha=native_alpha), "native", dec),
        f"{args.kind} key (α {alpha:g})": generate_rows(pipe, problems, prompts, steered, "steered", dec),
        f"random-mapped {args.kind} (α {alpha:g})": random_mapped_rows(
            pipe, key, fitted, problems, prompts, alpha, dec),
    }
    has_word = {name: [bool(SEQUENCE_WORDS.search(r["output"])) for r in rows] for name, rows in results.items()}
    lines = [f"## Confirmation on fresh problems: the sequence-word signature ({args.source} → {args.target})", "",
             __doc__.split("\n\n")[2].replace("\n", " "), "",
             f"`python -m analysis.confirm_signature --source {args.source} --target {args.target} --kind {args.kind} "
             f"--n {args.n} --max-new-tokens {args.max_new_tokens}` ({time.perf_counter() - t0:.0f} s, "
             f"{args.threads} CPU threads; pick: {pick.method} rank {int(pick['rank'])}, α {alpha:g})", "",
             "| condition | sequence words [95% CI] | degenerate | CoT among non-degenerate | "
             "≥ 2 arithmetic steps among non-degenerate | first output |",
             "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        k = sum(has_word[name])
        lo, hi = wilson_interval(k, len(rows))
        b = behaviour(rows)
        first = rows[0]["output"][:80].replace("\n", "\\n").replace("|", "/")
        lines.append(f"| {name} | {k / len(rows):.3f} [{lo:.3f}, {hi:.3f}] | {b['degenerate_rate']:.3f} | "
                     f"{b['cot_rate_non_degenerate']:.3f} | {b['multi_step_rate_non_degenerate']:.3f} | `{first}` |")
    keyed, control = has_word[f"{args.kind} key (α {alpha:g})"], has_word[f"random-mapped {args.kind} (α {alpha:g})"]
    diff = paired_bootstrap_diff(keyed, control)
    verdict = "holds" if diff.lo > 0 else "does not hold"
    lines += ["", f"Key minus random-mapped control, sequence-word share: {diff.diff:+.3f} [{diff.lo:+.3f}, "
              f"{diff.hi:+.3f}] (paired bootstrap 95%), McNemar p = {mcnemar_exact(keyed, control):.2g}: "
              f"the hypothesis **{verdict}** on these {args.n} problems."]
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return args.md


if __name__ == "__main__":
    main()
