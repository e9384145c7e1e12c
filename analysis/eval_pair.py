"""Evaluate UNLOCK on one source → target pair end to end; write a table, rows and provenance.

    python -m analysis.eval_pair --source smollm2-135m-instruct --target gemma-3-270m \\
        --dataset svamp --limit 100 --out analysis/results/eval_pair

Steps (all method logic lives in unlock_lens; this script only wires calls):
1. CoT key from the source on GSM8K-train *key* questions (direct vs CoT prompt);
2. alignment into the target on disjoint GSM8K-train *align* questions (the same seeded
   key/align split as ``unlock-lens extract`` / ``align``);
3. alpha chosen on a *dev* split of the evaluation set, disjoint from its *eval* split;
4. direct / cot-prompt / steered / random (3 seeds) / native-key on the eval split.

Writes to ``--out``: ``summary.md`` (command, wall time, alpha selection, table),
``summary.csv``, ``results.jsonl`` / ``.parquet`` / ``.meta.json``, ``dev.*`` (alpha-selection
rows), ``pack.safetensors`` (with the selected alpha) and ``run.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from unlock_lens.artifacts import atomic_write_bytes
from unlock_lens.evaluate import TRAIN_SPLIT_FRACTIONS, load_dataset, markdown_table, split_problems
from unlock_lens.evaluate.runner import Decoding, evaluate, select_alpha
from unlock_lens.models import load_model
from unlock_lens.prompts import COT, DIRECT
from unlock_lens.unlock import Unlock

CONDITIONS = ("direct", "cot-prompt", "steered", "random", "native-key")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=100, help="eval problems")
    p.add_argument("--n-dev", type=int, default=50, help="dev problems for alpha selection")
    p.add_argument("--dev-fraction", type=float, default=0.2, help="share of the set held as dev")
    p.add_argument("--n-key", type=int, default=128)
    p.add_argument("--n-align", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--method", default="svd")
    p.add_argument("--aggregator", default="mean")
    p.add_argument("--alphas", default="0.05,0.1,0.2,0.5", help="dev grid (the paper's)")
    p.add_argument("--seeds", default="0,1,2", help="random-control seeds")
    p.add_argument("--prompt-style", choices=("plain", "auto"), default="auto",
                   help="auto (default, as Unlock): chat template for models that have one; plain: the authors' zero-shot text everywhere")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="data splits and bootstrap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("analysis/results/eval_pair"))
    return p.parse_args(argv)


def gsm8k_questions(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    parts = split_problems(load_dataset("gsm8k", "train"), TRAIN_SPLIT_FRACTIONS, seed=args.seed)
    return ([p.question for p in parts["key"][: args.n_key]],
            [p.question for p in parts["align"][: args.n_align]])


def dev_eval_problems(args: argparse.Namespace):
    fractions = {"dev": args.dev_fraction, "eval": 1 - args.dev_fraction}
    parts = split_problems(load_dataset(args.dataset, args.split), fractions, seed=args.seed)
    return parts["dev"][: args.n_dev], parts["eval"][: args.limit]


def report(args: argparse.Namespace, command: str, wall_s: float, selection, table) -> str:
    dev = ", ".join(f"{a}: {acc:.3f}" for a, acc in selection.record["dev_accuracy"].items())
    return (
        f"# UNLOCK {args.source} → {args.target} on {args.dataset} ({args.split})\n\n"
        f"Command: `{command}`\n\nWall time: {wall_s:.0f} s\n\n"
        f"Alpha {selection.alpha:g} selected on {selection.record['n_dev']} dev problems "
        f"(dev accuracy per alpha: {dev}).\n\n"
        "accuracy: 95% Wilson interval; diff: paired difference against direct with a 95% "
        "paired-bootstrap interval; mcnemar_p: exact McNemar test against direct; random: "
        "pooled over seeds (seed empty) and per seed.\n\n" + markdown_table(table)
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([sys.executable, "-m", "analysis.eval_pair", *sys.argv[1:]]
                         if argv is None else ["python", "-m", "analysis.eval_pair", *argv])
    start = time.perf_counter()
    key_q, align_q = gsm8k_questions(args)
    dev, problems = dev_eval_problems(args)
    source, target = load_model(args.source, device=args.device), load_model(args.target, device=args.device)
    formats = {} if args.prompt_style == "auto" else {
        "locked_format": DIRECT, "unlocked_format": COT, "target_format": DIRECT}
    pipe = Unlock(source=source, target=target, aggregator=args.aggregator, method=args.method,
                  rank=args.rank, batch_size=args.batch_size, progress=True, **formats)
    pack = pipe.run(key_q, align_q)
    decoding = Decoding(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    alphas = [float(a) for a in args.alphas.split(",")]
    selection = select_alpha(target, pack, dev, alphas, eval_problems=problems,
                             save_to=args.out / "pack.safetensors", decoding=decoding, progress=True)
    results = evaluate(target, problems, conditions=CONDITIONS, pack=pack, alphas=[selection.alpha],
                       seeds=[int(s) for s in args.seeds.split(",")], key_questions=key_q,
                       decoding=decoding, progress=True)
    wall_s = time.perf_counter() - start
    run = {"command": command, "wall_s": wall_s, "args": {k: str(v) for k, v in vars(args).items()}}
    results.metadata.update(run=run)
    results.save(args.out)
    selection.results.save(args.out, stem="dev")
    table = results.summary(n_boot=args.n_boot, seed=args.seed)
    atomic_write_bytes(args.out / "summary.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(args.out / "summary.md", report(args, command, wall_s, selection, table).encode())
    atomic_write_bytes(args.out / "run.json", json.dumps(run, indent=2).encode())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wall time {wall_s:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
