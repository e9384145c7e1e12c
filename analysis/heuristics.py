"""The generation heuristics against hand labels: a sample of real-pair outputs, regenerated.

    python -m analysis.heuristics --generate --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.heuristics --generate --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.heuristics   # agreement with tests/fixtures/heuristic_labels.jsonl -> heuristics.md

``--generate`` rebuilds, from ``real_pair_data``'s dev picks (``picks.csv``, ``run.json``), the
outputs of the first ``--n`` evaluation problems of each set (SVAMP, MultiArith) under direct,
the native key, each data kind's key, the ``tokens+last`` random-mapped control and the CoT
prompt (and, SmolLM2 -> Gemma, the native key at α 0.02, where dev outputs were mostly blank),
with the evaluation's decoding. For each whitespace-only output it also keeps the raw
continuation without stop strings (``raw``), so a reader can see whether the model wrote nothing
or began the next "Question:" that the stop string cut. Rows go to
``--out/<source>_to_<target>/sample.jsonl`` (not committed: they quote the evaluation sets).

The hand labels (written by reading each output, before any heuristic was scored on them) live
in ``tests/fixtures/heuristic_labels.jsonl`` with the outputs they label and each problem's id,
never its question. The default mode scores each heuristic against them: accuracy, Cohen's
kappa and the confusion counts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis import MapBank, load_any
from analysis.real_pair_data import generate_rows, problem_sets, random_mapped_rows
from unlock_lens import Steering, Unlock, generate
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.controls import random_like
from unlock_lens.evaluate import load_dataset
from unlock_lens.evaluate.runner import Decoding

RESULTS = Path("analysis/results")
FIXTURE = Path("tests/fixtures/heuristic_labels.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generate", action="store_true", help="regenerate the sample of one direction")
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=7, help="evaluation problems per set (the first n)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=Path, default=RESULTS / "real_pair_data")
    p.add_argument("--out", type=Path, default=RESULTS / "heuristics")
    p.add_argument("--fixture", type=Path, default=FIXTURE)
    p.add_argument("--md", type=Path, default=RESULTS / "heuristics.md")
    return p.parse_args(argv)


def raw_continuations(pipe: Unlock, prompts: list[str], steering: Steering | None, n_tokens: int = 12) -> list[str]:
    """What the target writes on ``prompts`` without stop strings (the text a stop string cut)."""
    tv = pipe.target_variant
    return [g.text for g in generate(tv.model, prompts, steering=steering, max_new_tokens=n_tokens,
                                     special_tokens=tv.special_tokens)]


def generate_sample(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    name = f"{Path(args.source).name}_to_{Path(args.target).name}"
    run_dir, out = args.runs / name, args.out / name
    if not (run_dir / "picks.csv").is_file():
        raise SystemExit(f"{run_dir}: no picks.csv; run `python -m analysis.real_pair_data --source {args.source} "
                         f"--target {args.target}` first (the sample reuses its dev picks)")
    run = json.loads((run_dir / "run.json").read_text())
    picks = {str(r["condition"]): r for _, r in pd.read_csv(run_dir / "picks.csv").iterrows()}
    source, target = load_any(args.source), load_any(args.target)
    pipe = Unlock(source, target, protocol="library")
    pool = [q.question for q in load_dataset("gsm8k", "train")]
    key_qs, align_qs = pipe.protocol.question_sets(pool, int(run["n_key"]), int(run["n_align"]))
    split = argparse.Namespace(seed=int(run["seed"]), n_dev=int(run["n_dev"]), n_eval=args.n)
    _, held = problem_sets(split, key_qs + align_qs)
    key = pipe.extract(key_qs)
    native = Unlock(target, target, protocol="library").extract(key_qs)
    bank = MapBank(pipe.locked, pipe.target_variant, align_qs,
                   LayerPairing.by_depth(key.source.n_layers, int(target.cfg.n_layers)), int(run["max_pairs"]))
    tv = pipe.target_variant
    _, t_cot = pipe.protocol.formats(target.tokenizer)
    prompts = tv.prompts([p.question for p in held])
    cot_prompts = t_cot.render_all([p.question for p in held], target.tokenizer)
    dec = Decoding(max_new_tokens=int(run["max_new_tokens"]), batch_size=16, stop_loops=True,
                   stop_strings=tuple(pipe.protocol.decoding_for().stop_strings))

    def steering(kind: str) -> Steering:
        p = picks[kind]
        return Steering(map_directions(key, bank(kind, p.method, int(p["rank"]))), alpha=float(p.alpha))

    native_alpha = float(picks["native key"].alpha)
    conditions: dict[str, tuple[list[str], Any]] = {
        "direct": (prompts, None),
        f"native key (α {native_alpha:g})": (prompts, Steering(native.directions, alpha=native_alpha))}
    if Path(args.target).name.startswith("gemma"):
        conditions["native key (α 0.02)"] = (prompts, Steering(native.directions, alpha=0.02))
    for kind in run["kinds"].split(","):
        if kind in picks:
            conditions[f"{kind} key"] = (prompts, steering(kind))
    conditions["cot-prompt"] = (cot_prompts, None)
    rows = []
    for label, (ps, steer) in conditions.items():
        part = generate_rows(pipe, held, ps, steer, label, dec)
        rows += [{"condition": label, **r} for r in part]
        print(f"[{time.perf_counter() - t0:5.0f}s] {label}", flush=True)
    p = picks["tokens+last"]
    fitted = bank("tokens+last", p.method, int(p["rank"]))
    part = random_mapped_rows(pipe, key, fitted, held, prompts, float(p.alpha), dec)
    rows += [{"condition": "random-mapped tokens+last", **r} for r in part]
    print(f"[{time.perf_counter() - t0:5.0f}s] random-mapped tokens+last", flush=True)

    # what the stop strings cut from whitespace-only outputs
    blank = [i for i, r in enumerate(rows) if not r["output"].strip()]
    for i in blank:
        r = rows[i]
        if r["condition"] == "random-mapped tokens+last":
            rnd = random_like({layer: key.direction(layer) for layer in key.layers}, int(r["seed"]))
            steer = Steering(map_directions(rnd, fitted), alpha=float(p.alpha))
        else:
            steer = conditions[r["condition"]][1]
        r["raw"] = raw_continuations(pipe, [r["prompt"]], steer)[0]
    out.mkdir(parents=True, exist_ok=True)
    keep = ("condition", "problem_id", "alpha", "seed", "output", "n_tokens", "raw")
    path = out / "sample.jsonl"
    path.write_text("".join(json.dumps({"direction": name, **{k: r.get(k) for k in keep}}) + "\n" for r in rows))
    print(f"[{time.perf_counter() - t0:5.0f}s] {len(rows)} rows -> {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.generate:
        print(generate_sample(args))
    else:
        raise SystemExit("agreement report: not written yet")


if __name__ == "__main__":
    main()
