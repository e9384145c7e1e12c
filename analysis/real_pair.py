"""UNLOCK across model families on real weights, one direction per run; report both.

    python -m analysis.real_pair --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.real_pair --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.real_pair --report          # -> analysis/results/real_pair.md

One run (all method logic is library calls; this script wires them and writes files):

1. **Key**: the source's prompt-driven CoT key (its direct vs its CoT prompt: chat template
   for an instruct model, plain ``Question: ... Answer:`` for a base model) on ``--n-key``
   GSM8K-train questions; the target's own key (*native key*) on the same questions.
2. **Alignment** on ``--n-align`` further GSM8K-train questions, each model in its locked
   (direct) format, as the paper. A *contrast-inclusive* fit (the same questions in the
   locked and the unlocked format) is scored beside it and marked as such.
3. **Selection on dev only**: ``--n-dev`` problems per evaluation set, disjoint from its eval
   problems. Score = KL from the target's CoT-prompt first-token distribution to its steered
   direct-prompt one (lower = closer to CoT; ``diagnostics.ablations``). Method x rank at the
   middle alpha, then alpha at the best (method, rank); the native key's alpha likewise.
   Dev accuracy is not the criterion: these models sit near 0% on the dev problems.
4. **Evaluation** on ``--n-eval`` problems per set: direct, cot-prompt, steered, native-key,
   and random directions (same per-layer norms as the steered key): the i-th of ``--seeds``
   on every n-th problem (3 seeds at the cost of one condition; pooled over all problems).
   Greedy, ``--max-new-tokens``, stop strings, loops stopped (``Decoding.stop_loops``).

Files in ``--out/<source>_to_<target>/``: ``run.json`` (args, hashes, wall time, machine),
``selection.csv`` / ``contrast_inclusive.csv`` / ``native_alpha.csv`` / ``dev_random.csv``
/ ``dev_sanity.csv`` (proxy tables), ``key_cosines.csv``, ``pack.safetensors``,
``eval_<set>_<part>.jsonl`` (+ meta; a finished part is reused on re-run),
``summary_<set>.csv`` and ``section.md``. ``--report`` joins the sections into
``analysis/results/real_pair.md`` (after ``--out/reading.md``, the interpretation, then
``real_pair_fidelity.md`` / ``real_pair_generation.md`` (the F and generation tables of
``analysis.real_pair_fidelity`` and ``analysis.real_pair_generation``), then ``data_kinds.md``
and ``signature.md`` from ``analysis.real_pair_data`` and ``analysis.confirm_signature``, each
if present)
and draws each run's ``rank_sweep_kl`` figure (HTML; PNG when static export works).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis import log
from unlock_lens.activations import Variant, capture, final_logits
from unlock_lens.align.layers import AlignSpec
from unlock_lens.artifacts import atomic_write_bytes
from unlock_lens.controls import random_like
from unlock_lens.diagnostics.ablations import (
    AblationSetup,
    alpha_sweep,
    prepare_ablation,
    rank_sweep,
)
from unlock_lens.diagnostics.similarity import key_cosines
from unlock_lens.evaluate import TRAIN_SPLIT_FRACTIONS, load_dataset, markdown_table, split_problems
from unlock_lens.evaluate.datasets import Problem, question_fingerprint
from unlock_lens.evaluate.results import EvalResults, summarize
from unlock_lens.evaluate.runner import Decoding, check_disjoint, evaluate
from unlock_lens.masterkey import extract_masterkey
from unlock_lens.models import load_model
from unlock_lens.pack import CapabilityPack
from unlock_lens.plots import rank_sweep_figure, save_figure
from unlock_lens.prompts import default_formats
from unlock_lens.steer import Steering

EVAL_PARTS = {"dev": 0.2, "eval": 0.8}
SUMMARY_COLUMNS = ["condition", "alpha", "seed", "n", "accuracy", "acc_lo", "acc_hi", "diff",
                   "diff_lo", "diff_hi", "mcnemar_p", "cot_rate", "multi_step_rate", "mean_tokens",
                   "first_token_entropy"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--datasets", default="multiarith,svamp")
    p.add_argument("--n-key", type=int, default=200)
    p.add_argument("--n-align", type=int, default=256)
    p.add_argument("--n-dev", type=int, default=16, help="dev problems per evaluation set")
    p.add_argument("--n-eval", type=int, default=200, help="eval problems per evaluation set")
    p.add_argument("--methods", default="svd,procrustes,cca")
    p.add_argument("--ranks", default="2,4,8,16,32")
    p.add_argument("--alphas", default="0.05,0.1,0.2,0.5", help="the paper's grid")
    p.add_argument("--seeds", default="0,1,2", help="random-control seeds")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--engine", choices=("auto", "bridge", "hf"), default="auto",
                   help="generation loop (same greedy tokens; hf is faster on large vocabularies)")
    p.add_argument("--skip-eval", action="store_true", help="selection and proxies only")
    p.add_argument("--seed", type=int, default=0, help="data splits and bootstrap")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--report", action="store_true", help="only join the sections in --out")
    p.add_argument("--out", type=Path, default=Path("analysis/results/real_pair"))
    p.add_argument("--report-to", type=Path, default=Path("analysis/results/real_pair.md"))
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# ---- data ---------------------------------------------------------------------------------


def question_sets(args: argparse.Namespace) -> dict[str, Any]:
    """GSM8K-train key / align questions; dev / eval problems per evaluation set; all disjoint."""
    gsm = split_problems(load_dataset("gsm8k", "train"), TRAIN_SPLIT_FRACTIONS, seed=args.seed)
    key, align = gsm["key"][: args.n_key], gsm["align"][: args.n_align]
    if len(key) < args.n_key or len(align) < args.n_align:
        raise SystemExit(f"GSM8K-train has only {len(key)} key / {len(align)} align questions")
    dev: dict[str, list[Problem]] = {}
    held: dict[str, list[Problem]] = {}
    for name in args.datasets.split(","):
        parts = split_problems(load_dataset(name, "test"), EVAL_PARTS, seed=args.seed)
        dev[name], held[name] = parts["dev"][: args.n_dev], parts["eval"][: args.n_eval]
        check_disjoint(dev[name], held[name], f"{name} dev and eval")
        check_disjoint(key + align, held[name] + dev[name], f"GSM8K key/align and {name}")
    check_disjoint(key, align, "key and align")
    return {"key": [p.question for p in key], "align": [p.question for p in align],
            "dev": dev, "eval": held}


def _hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(question_fingerprint(t) for t in texts)).encode()).hexdigest()[:16]


# ---- selection on dev (first-token proxy) --------------------------------------------------


def sweep_alpha(alphas: list[float]) -> float:
    """The alpha the method x rank grid runs at: the lower middle of the grid (0.1 of the paper's)."""
    ordered = sorted(alphas)
    return ordered[max(len(ordered) // 2 - 1, 0)]


def contrast_inclusive(setup: AblationSetup, s_unlocked: Variant, t_unlocked: Variant,
                       questions: list[str], batch_size: int) -> AblationSetup:
    """The same setup, maps fitted on the locked *and* the unlocked prompts (2n pairs)."""
    H_s = capture(s_unlocked.model, s_unlocked.prompts(questions), setup.source_layers,
                  hook=setup.key.hook, batch_size=batch_size)
    H_t = capture(t_unlocked.model, t_unlocked.prompts(questions), setup.target_layers,
                  hook=setup.key.hook, batch_size=batch_size)
    return dataclasses.replace(setup, H_src=torch.cat([setup.H_src, H_s]),
                               H_tgt=torch.cat([setup.H_tgt, H_t]))


def pick(frame: pd.DataFrame, condition: str = "key") -> pd.Series:
    """The ``condition`` row with the lowest dev KL (ties: first listed)."""
    rows = frame[frame.condition == condition]
    return rows.loc[rows["kl_mean"].idxmin()]


def proxy_row(label: str, alpha: float, kl: torch.Tensor, logp: torch.Tensor) -> dict[str, Any]:
    """One row of a dev proxy table: mean KL with its standard error, mean log-mass."""
    return {"condition": label, "alpha": alpha, "kl_mean": float(kl.mean()),
            "kl_sem": float(kl.std() / len(kl) ** 0.5), "logp_mean": float(logp.mean())}


def last_block_mean_shift(setup: AblationSetup, native: Any) -> pd.DataFrame:
    """Sanity row: the native mean difference added raw (alpha 1) at the last block.

    That edit maps the mean direct-prompt state onto the mean CoT-prompt state, so it must
    move the target toward its CoT distribution; the rotate edits carry no such guarantee.
    """
    last = setup.target_layers[-1]
    steering = Steering({last: native.directions[native.layers.index(last)]}, 1.0, "raw")
    kl, logp = setup.score(final_logits(setup.target, setup.direct_prompts,
                                        batch_size=setup.batch_size, steering=steering))
    return pd.DataFrame([proxy_row(f"native mean shift, last block {last} (raw, α=1)", 1.0, kl, logp)])


def direction_scores(setup: AblationSetup, directions: dict[int, torch.Tensor],
                     alphas: list[float], label: str) -> pd.DataFrame:
    return pd.DataFrame([
        proxy_row(label, a, *setup.score(setup.steered_logits(directions, setup.target_layers, a)))
        for a in alphas
    ])


# ---- evaluation ---------------------------------------------------------------------------


def eval_part(out: Path, stem: str, config: dict[str, Any], run: Any) -> EvalResults:
    """Reuse ``<out>/<stem>.jsonl`` when it was written with the same config; else run and save."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = out / f"{stem}.jsonl"
    if path.is_file():
        done = EvalResults.load(path)
        if done.metadata.get("part_config") == digest:
            return done
    results = run()
    results.metadata["part_config"] = digest
    results.save(out, stem=stem)
    return results


def evaluate_set(args: argparse.Namespace, out: Path, name: str, target: Any,
                 pack: CapabilityPack, native_alpha: float, key_q: list[str],
                 problems: list[Problem], t0: float) -> pd.DataFrame:
    decoding = Decoding(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        stop_loops=True, engine=args.engine)
    # the engine is left out: all give the same greedy tokens (tests/test_generation.py)
    settings = {k: v for k, v in decoding.to_dict().items() if k != "engine"}
    base = {"pack": pack.content_hash, "decoding": settings,
            "problems": [p.id for p in problems]}
    common = {"pack": pack, "decoding": decoding, "progress": True}
    parts = [
        ("base", lambda: evaluate(target, problems, conditions=("direct", "cot-prompt", "steered"),
                                  alphas=[pack.alpha], **common)),
        ("native", lambda: evaluate(target, problems, conditions=("native-key",),
                                    alphas=[native_alpha], key_questions=key_q, **common)),
    ]
    seeds = _ints(args.seeds)
    for i, s in enumerate(seeds):  # seed i of n on every n-th problem
        share = problems[i :: len(seeds)]
        parts.append((f"random{s}", lambda share=share, s=s: evaluate(
            target, share, conditions=("random",), alphas=[pack.alpha], seeds=[s], **common)))
    rows: list[dict[str, Any]] = []
    for part, run in parts:
        config = {**base, "part": part, "native_alpha": native_alpha, "n_key": len(key_q)}
        rows += eval_part(out, f"eval_{name}_{part}", config, run).rows
        log(t0, f"{name}: {part} done")
    table = summarize(rows, n_boot=args.n_boot, seed=args.seed)
    atomic_write_bytes(out / f"summary_{name}.csv", table.to_csv(index=False).encode())
    return table


# ---- one direction ------------------------------------------------------------------------


def run_direction(args: argparse.Namespace, argv: list[str] | None) -> None:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out / f"{args.source}_to_{args.target}"
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "analysis.real_pair", *(sys.argv[1:] if argv is None else argv)])
    qs = question_sets(args)
    src, tgt = load_model(args.source), load_model(args.target)
    s_locked, s_unlocked = (Variant(src, f) for f in default_formats(src.tokenizer))
    t_locked, t_unlocked = (Variant(tgt, f) for f in default_formats(tgt.tokenizer))
    key = extract_masterkey(s_locked, s_unlocked, qs["key"], batch_size=args.batch_size)
    native = extract_masterkey(t_locked, t_unlocked, qs["key"], batch_size=args.batch_size)
    log(t0, "keys extracted")

    dev_q = [p.question for name in qs["dev"] for p in qs["dev"][name]]
    setup = prepare_ablation(key, s_locked, t_locked, qs["align"], dev_q,
                             unlocked_format=t_unlocked.format, batch_size=args.batch_size)
    alphas = _floats(args.alphas)
    grid = rank_sweep(setup, ranks=_ints(args.ranks), methods=args.methods.split(","),
                      alpha=sweep_alpha(alphas), seeds=())
    best = pick(grid)
    method, rank = str(best["method"]), int(best["rank"])
    setup.spec = AlignSpec(method, rank, setup.centered)
    by_alpha = alpha_sweep(setup, alphas=alphas, seeds=())
    alpha = float(pick(by_alpha)["alpha"])
    selection = pd.concat([grid.assign(step="method x rank"), by_alpha.assign(step="alpha")])
    atomic_write_bytes(out / "selection.csv", selection.to_csv(index=False).encode())
    log(t0, f"selected {method} k={rank} alpha={alpha}")

    dirs = setup.directions()
    native_dirs = {layer: native.directions[j] for j, layer in enumerate(native.layers)}
    native_alpha_tab = direction_scores(setup, native_dirs, alphas, "native-key")
    native_alpha = float(pick(native_alpha_tab, "native-key")["alpha"])
    randoms = pd.concat([direction_scores(setup, random_like(dirs, s), [alpha], f"random seed {s}")
                         for s in _ints(args.seeds)])
    inclusive = contrast_inclusive(setup, s_unlocked, t_unlocked, qs["align"], args.batch_size)
    inc = direction_scores(inclusive, inclusive.directions(method, rank), [alpha],
                           "contrast-inclusive fit")
    direct_kl, _ = setup.score(setup.direct_logits)
    sanity = last_block_mean_shift(setup, native)
    atomic_write_bytes(out / "native_alpha.csv", native_alpha_tab.to_csv(index=False).encode())
    atomic_write_bytes(out / "dev_random.csv", randoms.to_csv(index=False).encode())
    atomic_write_bytes(out / "dev_sanity.csv", sanity.to_csv(index=False).encode())
    atomic_write_bytes(out / "contrast_inclusive.csv", inc.to_csv(index=False).encode())
    cosines = key_cosines(dirs, native_dirs)
    atomic_write_bytes(out / "key_cosines.csv", cosines.to_csv(index=False).encode())
    log(t0, "controls scored")

    pack = CapabilityPack.from_alignment(
        key, setup.maps(), source=s_locked, target=t_locked, questions=qs["align"],
        spec=AlignSpec(method, rank, setup.centered), alpha=alpha,
        selection="min dev first-token KL to the CoT prompt")
    pack.save(out / "pack.safetensors")

    summaries = {}
    if not args.skip_eval:
        for name, problems in qs["eval"].items():
            summaries[name] = evaluate_set(args, out, name, tgt, pack, native_alpha, qs["key"],
                                           problems, t0)
    wall = time.perf_counter() - t0
    run = {
        "command": command, "wall_s": wall, "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(args.threads), "selected": {"method": method, "rank": rank,
                                                        "alpha": alpha, "native_alpha": native_alpha},
        "dev_direct_kl": float(direct_kl.mean()),
        "hashes": {"key": _hash(qs["key"]), "align": _hash(qs["align"]),
                   **{f"dev_{n}": _hash([p.question for p in v]) for n, v in qs["dev"].items()},
                   **{f"eval_{n}": _hash([p.question for p in v]) for n, v in qs["eval"].items()}},
        "n": {"key": len(qs["key"]), "align": len(qs["align"]),
              **{f"dev_{n}": len(v) for n, v in qs["dev"].items()},
              **{f"eval_{n}": len(v) for n, v in qs["eval"].items()}},
        "formats": {"source": [s_locked.format.name, s_unlocked.format.name],
                    "target": [t_locked.format.name, t_unlocked.format.name]},
    }
    atomic_write_bytes(out / "run.json", json.dumps(run, indent=2).encode())
    atomic_write_bytes(out / "section.md", section(args, run, selection, native_alpha_tab,
                                                   pd.concat([randoms, sanity]), inc, cosines,
                                                   summaries).encode())
    log(t0, f"done -> {out}")


def machine(threads: int) -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads,
            "device": "cpu"}


# ---- writing ------------------------------------------------------------------------------


def _fmt(frame: pd.DataFrame, columns: list[str]) -> str:
    return markdown_table(frame[[c for c in columns if c in frame.columns]])


def section(args: argparse.Namespace, run: dict[str, Any], selection: pd.DataFrame,
            native_tab: pd.DataFrame, randoms: pd.DataFrame, inclusive: pd.DataFrame,
            cosines: pd.DataFrame, summaries: dict[str, pd.DataFrame]) -> str:
    sel = run["selected"]
    grid = selection[(selection.step == "method x rank") & (selection.condition == "key")]
    pivot = grid.pivot_table(index="rank", columns="method", values="kl_mean").reset_index()
    pivot["rank"] = pivot["rank"].astype(int)
    alpha_rows = selection[(selection.step == "alpha") & (selection.condition != "direct")]
    parts = [
        f"## {args.source} → {args.target}\n",
        f"Command: `{run['command']}`  \nWall time: {run['wall_s']:.0f} s on {run['machine']['cpus']} "
        f"CPU cores ({run['machine']['torch_threads']} torch thread(s)), torch {run['machine']['torch']}.\n",
        f"Prompts: key {run['n']['key']} and align {run['n']['align']} GSM8K-train questions "
        f"(disjoint); formats source {run['formats']['source']}, target {run['formats']['target']}; "
        "dev/eval counts " + ", ".join(f"{k} {v}" for k, v in run["n"].items() if k[:3] in ("dev", "eva"))
        + ".\n",
        "### Selection on dev (first-token KL to the CoT prompt; lower is closer)\n",
        f"Unsteered (direct) dev KL: {run['dev_direct_kl']:.3f}. Method × rank at α = "
        f"{sweep_alpha(_floats(args.alphas)):g}:\n",
        markdown_table(pivot) + "\n",
        f"Chosen: **{sel['method']} k={sel['rank']}**; alpha sweep at that map:\n",
        _fmt(alpha_rows, ["alpha", "kl_mean", "kl_sem", "logp_mean"]) + "\n",
        f"Chosen α = **{sel['alpha']:g}**. Controls at that α, and the native key's α sweep "
        f"(chosen α = {sel['native_alpha']:g}):\n",
        _fmt(pd.concat([randoms, inclusive, native_tab]),
             ["condition", "alpha", "kl_mean", "kl_sem", "logp_mean"]) + "\n",
        "The contrast-inclusive fit aligns on locked *and* CoT prompts, so its maps have seen "
        "the contrast the key encodes: an optimistic reference, not the paper's protocol.\n",
        f"Transferred vs native key, cosine per target layer: mean {cosines.cosine.mean():.3f}, "
        f"max {cosines.cosine.max():.3f} (layer {int(cosines.loc[cosines.cosine.idxmax(), 'layer'])}).\n",
    ]
    for name, table in summaries.items():
        parts += [f"### {name}: evaluation ({run['n'].get('eval_' + name)} problems)\n",
                  _fmt(table, SUMMARY_COLUMNS) + "\n"]
    if not summaries:
        parts.append("(evaluation skipped: `--skip-eval`)\n")
    return "\n".join(parts)


HEADER = """# UNLOCK on real models: SmolLM2-135M-Instruct ⇄ Gemma-3-270M

Written by `python -m analysis.real_pair --report`: the reading, then the alignment-data study
(`python -m analysis.real_pair_data`, both directions, then `--report`), then the first runs with
the paper's alignment data (`python -m analysis.real_pair`; see each script's docstring for its
protocol). In the first runs' tables: accuracy: 95% Wilson interval; `diff`: paired difference against
direct with a 95% paired-bootstrap interval; `mcnemar_p`: exact McNemar test against direct;
`cot_rate`: share of outputs that show working by the lenient `shows_working` heuristic (two sentences
suffice); `multi_step_rate` (runs after issue 23): the stricter share with two or more arithmetic steps
`a op b = c`; `mean_tokens`: output
length up to EOS, a stop string or a detected loop; `first_token_entropy`: entropy (nats) of the
first next-token distribution, as generated. `random`: seed s on every third problem; the pooled
row covers all problems. Hyper-parameters (method, rank, alpha) were chosen on dev problems only.
"""


def rank_figure(run_dir: Path, png: bool | None = None) -> list[Path]:
    """``rank_sweep_kl.html`` (+ ``.png`` when static export works) from ``selection.csv``."""
    selection = pd.read_csv(run_dir / "selection.csv")
    grid = selection[selection.step == "method x rank"]
    fig = rank_sweep_figure(grid)
    alpha = grid.loc[grid.condition == "key", "alpha"].iloc[0]
    fig.update_layout(title=f"Dev first-token KL vs alignment rank (α = {alpha:g})<br>"
                            f"<sup>{run_dir.name.replace('_to_', ' → ')}</sup>")
    return save_figure(fig, run_dir / "rank_sweep_kl", png=png, include_plotlyjs="cdn")


def report(out: Path, path: Path, png: bool | None = None) -> Path:
    """Join ``<out>/*_to_*/section.md`` under the header into ``path``, with each run's figure."""
    runs = sorted(p.parent for p in out.glob("*_to_*/section.md"))
    if not runs:
        raise SystemExit(f"no runs under {out}: run a direction first")
    parts = [HEADER]
    reading = out / "reading.md"  # the hand-written interpretation, kept beside the runs
    if reading.is_file():
        parts.append(reading.read_text())
    for decided in ("real_pair_fidelity.md", "real_pair_generation.md"):  # the F and generation tables
        if (out.parent / decided).is_file():
            parts.append(re.sub(r"(?m)^(#+) ", r"#\1 ", (out.parent / decided).read_text()))  # one level down
    by_data = out / "data_kinds.md"  # analysis.real_pair_data --report
    if by_data.is_file():
        parts.append(by_data.read_text())
    signature = out / "signature.md"  # analysis.confirm_signature
    if signature.is_file():
        parts.append(signature.read_text())
    if by_data.is_file():
        parts.append("## The first runs: the paper's alignment data (`last`), α from the paper's grid\n")
    for run_dir in runs:
        parts.append((run_dir / "section.md").read_text())
        args = json.loads((run_dir / "run.json").read_text())["args"]
        parts.append(f"Decoding: greedy, at most {args['max_new_tokens']} new tokens, batch "
                     f"{args['batch_size']}, stop strings, loops stopped, engine "
                     f"{args.get('engine', 'bridge')}; {args['seeds']} random seeds.\n")
        for fig in rank_figure(run_dir, png):
            rel = os.path.relpath(fig, path.parent)
            parts.append(f"![rank sweep]({rel})\n" if fig.suffix == ".png" else f"Figure: [{rel}]({rel})\n")
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args.out, args.report_to))
        return
    run_direction(args, argv)


if __name__ == "__main__":
    main()
