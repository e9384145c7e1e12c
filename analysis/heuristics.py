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
import shlex
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis import MapBank, load_any
from analysis.real_pair_data import SEQUENCE_WORDS, generate_rows, problem_sets, random_mapped_rows
from unlock_lens import Steering, Unlock, generate
from unlock_lens.align.layers import LayerPairing, map_directions
from unlock_lens.controls import random_mapped
from unlock_lens.evaluate import load_dataset
from unlock_lens.evaluate.results import (
    DEGENERATE_KINDS,
    arithmetic_steps,
    degenerate,
    degenerate_kind,
    shows_working,
)
from unlock_lens.evaluate.runner import Decoding
from unlock_lens.evaluate.stats import cohen_kappa, confusion_counts

RESULTS = Path("analysis/results")
FIXTURE = Path("tests/fixtures/heuristic_labels.jsonl")
FIXTURE_FIELDS = ("direction", "condition", "problem_id", "seed", "output", "raw", "labels")
LABELS = {"shows_working": (True, False), "multi_step": (True, False), "sequenced": (True, False),
          "degenerate_kind": ("none", *DEGENERATE_KINDS)}


def _kind(text: str) -> str:
    return degenerate_kind(text) or "none"


# heuristic name -> (the heuristic on an output, the hand label it is read against, from a row's labels)
HEURISTICS: dict[str, tuple[Callable[[str], Hashable], Callable[[dict[str, Any]], Hashable]]] = {
    "shows_working (CoT format)": (shows_working, lambda lab: lab["shows_working"]),
    "shows_working, read as multi-step": (shows_working, lambda lab: lab["multi_step"]),
    ">= 2 arithmetic steps": (lambda t: arithmetic_steps(t) >= 2, lambda lab: lab["multi_step"]),
    "sequence words (post hoc)": (lambda t: bool(SEQUENCE_WORDS.search(t)), lambda lab: lab["sequenced"]),
    "degenerate": (degenerate, lambda lab: lab["degenerate_kind"] != "none"),
    "degenerate_kind (5 classes)": (_kind, lambda lab: lab["degenerate_kind"]),
    **{f"degenerate_kind == {k}": ((lambda t, k=k: _kind(t) == k), (lambda lab, k=k: lab["degenerate_kind"] == k))
       for k in DEGENERATE_KINDS},
}


def copies_question(text: str, question: str, n_words: int = 8) -> bool:
    """Whether ``text`` repeats ``n_words`` consecutive words of ``question`` (case-insensitive):
    such an output quotes the evaluation set and stays out of the committed fixture."""
    words = question.lower().split()
    spans = {" ".join(words[i:i + n_words]) for i in range(len(words) - n_words + 1)}
    said = text.lower().split()
    return any(" ".join(said[i:i + n_words]) in spans for i in range(len(said) - n_words + 1))


def fixture_rows(sample: list[dict[str, Any]], labels: list[dict[str, Any]], questions: dict[str, str]
                 ) -> list[dict[str, Any]]:
    """The labelled sample as fixture rows: ids, never questions; outputs that copy their question
    dropped; ``raw`` kept only up to its first "Question:" (what shows the cut)."""
    rows = []
    for r, lab in zip(sample, labels, strict=True):
        if copies_question(r["output"], questions[r["problem_id"]]):
            continue
        raw = r.get("raw")
        if raw is not None and "Question:" in raw:
            raw = raw[: raw.index("Question:") + len("Question:")]
        rows.append({"direction": r["direction"], "condition": r["condition"], "problem_id": r["problem_id"],
                     "seed": r["seed"], "output": r["output"], "raw": raw, "labels": lab})
    return rows


def load_labels(path: Path) -> list[dict[str, Any]]:
    """The hand-labelled outputs (one JSON object a line, ``FIXTURE_FIELDS``), checked."""
    if not path.is_file():
        raise SystemExit(f"{path}: no hand labels; label a sample from `python -m analysis.heuristics --generate`")
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    for i, r in enumerate(rows, 1):
        if set(r) != set(FIXTURE_FIELDS) or set(r["labels"]) != set(LABELS):
            raise SystemExit(f"{path}:{i}: fields {sorted(r)}, labels {sorted(r['labels'])}; "
                             f"expected {list(FIXTURE_FIELDS)} and labels {list(LABELS)}")
        if bad := [k for k, v in r["labels"].items() if v not in LABELS[k]]:
            raise SystemExit(f"{path}:{i}: label {bad[0]}={r['labels'][bad[0]]!r}; choose from {LABELS[bad[0]]}")
    return rows


def agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per heuristic: n, accuracy and Cohen's kappa against the hand labels, and the confusion
    counts ``{(label, heuristic): n}``."""
    table = []
    for name, (measure, label) in HEURISTICS.items():
        truth = [label(r["labels"]) for r in rows]
        said = [measure(r["output"]) for r in rows]
        table.append({"heuristic": name, "n": len(rows),
                      "accuracy": sum(t == s for t, s in zip(truth, said, strict=True)) / len(rows),
                      "kappa": cohen_kappa(truth, said), "confusion": confusion_counts(truth, said)})
    return table


def _confusion_text(confusion: dict[tuple[Hashable, Hashable], int]) -> str:
    def name(v: Hashable) -> str:
        return {True: "yes", False: "no"}.get(v, str(v)) if isinstance(v, bool) else str(v)

    return "; ".join(f"{name(t)}→{name(s)} {n}" for (t, s), n in
                     sorted(confusion.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def rates_by_condition(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per direction and condition: each measure's share, by hand label and by heuristic."""
    out = []
    for (direction, condition), group in pd.DataFrame(rows).groupby(["direction", "condition"], sort=False):
        labs, outs = list(group["labels"]), list(group["output"])
        n = len(group)
        out.append({"direction": direction.replace("_to_", " → "), "condition": condition, "n": n,
                    "shows working: label / heuristic":
                        f"{sum(lab['shows_working'] for lab in labs) / n:.2f} / {sum(map(shows_working, outs)) / n:.2f}",
                    "multi-step: label / ≥ 2 steps":
                        f"{sum(lab['multi_step'] for lab in labs) / n:.2f} / "
                        f"{sum(arithmetic_steps(t) >= 2 for t in outs) / n:.2f}",
                    "sequenced: label / words":
                        f"{sum(lab['sequenced'] for lab in labs) / n:.2f} / "
                        f"{sum(bool(SEQUENCE_WORDS.search(t)) for t in outs) / n:.2f}",
                    "degenerate: label / heuristic":
                        f"{sum(lab['degenerate_kind'] != 'none' for lab in labs) / n:.2f} / "
                        f"{sum(map(degenerate, outs)) / n:.2f}"})
    return pd.DataFrame(out)


def report(args: argparse.Namespace) -> Path:
    rows = load_labels(args.fixture)
    table = agreement(rows)
    command = " ".join(["python -m analysis.heuristics", *map(shlex.quote, sys.argv[1:])])
    lines = ["| heuristic | hand label | n | accuracy | Cohen's κ | confusion (label→heuristic: count) |",
             "|---|---|---|---|---|---|"]
    labelled = {"shows_working (CoT format)": "shows working", "shows_working, read as multi-step": "multi-step",
                ">= 2 arithmetic steps": "multi-step", "sequence words (post hoc)": "sequenced"}
    for r in table:
        label = labelled.get(r["heuristic"], "degenerate kind")
        lines.append(f"| {r['heuristic']} | {label} | {r['n']} | {r['accuracy']:.3f} | {r['kappa']:.3f} | "
                     f"{_confusion_text(r['confusion'])} |")
    by_cond = rates_by_condition(rows)
    lines += ["", "Shares per condition (hand label / heuristic):", "",
              "| " + " | ".join(by_cond.columns) + " |", "|" + "---|" * len(by_cond.columns)]
    lines += ["| " + " | ".join(str(v) for v in rec.values()) + " |" for rec in by_cond.to_dict("records")]
    text = args.md.read_text() if args.md.is_file() else "# Generation heuristics against hand labels\n"
    marker = "<!-- agreement: written by analysis.heuristics -->"
    head = text.split(marker)[0].rstrip() + "\n\n"
    body = f"{marker}\n\n`{command}` ({len(rows)} hand-labelled outputs, `{args.fixture}`):\n\n" + "\n".join(lines) + "\n"
    args.md.write_text(head + body)
    print(body)
    return args.md


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
        rows += generate_rows(pipe, held, ps, steer, label, dec)
        print(f"[{time.perf_counter() - t0:5.0f}s] {label}", flush=True)
    p = picks["tokens+last"]
    fitted = bank("tokens+last", p.method, int(p["rank"]))
    rows += random_mapped_rows(pipe, key, fitted, held, prompts, float(p.alpha), dec)  # condition "random"
    print(f"[{time.perf_counter() - t0:5.0f}s] random-mapped tokens+last", flush=True)

    # what the stop strings cut from whitespace-only outputs
    blank = [i for i, r in enumerate(rows) if not r["output"].strip()]
    for i in blank:
        r = rows[i]
        if r["condition"] == "random":
            steer = Steering(random_mapped(key, fitted, int(r["seed"])), alpha=float(p.alpha))
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
        report(args)


if __name__ == "__main__":
    main()
