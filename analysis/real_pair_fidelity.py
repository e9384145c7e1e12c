"""The real pair decided by likelihood fidelity: dev selection by F, held-out F against 30 nulls.

    python -m analysis.real_pair_fidelity --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.real_pair_fidelity --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.real_pair_fidelity --report     # -> analysis/results/real_pair_fidelity.md

One direction per run; the decision rule was fixed before any evaluation output was read:

1. Key (library protocol: the source's direct vs CoT prompt) and the target's own key on
   ``--n-key`` GSM8K-train questions; maps on ``--n-align`` other GSM8K-train questions
   (:class:`analysis.MapBank`, each data kind captured once).
2. **Dev** (``--n-dev`` SVAMP + MultiArith problems, disjoint from eval): for each alpha, the
   target's greedy continuations under its own key are the reference; every data kind x method
   x rank is scored by F (no nulls); the ``--keep`` best per alpha go on.
3. **Eval** (``--n-eval`` + ``--n-eval`` held-out problems): each kept setting, the best dev
   setting of every data kind (``--per-kind``) and the shipped default (``tokens+last``, svd,
   rank 256) at each alpha, by :func:`pack_fidelity` with the
   native reference: F [95% paired bootstrap], the negated key, ``--n-nulls`` random-mapped
   directions through that setting's maps (rank and direction-level p), and the first-token KL
   to the CoT prompt ranked the same way. Rule: a setting carries the behaviour when p <= 0.05.

``continuations`` kinds fit on the source's CoT-prompted greedy outputs (64 tokens, cut at the
stop strings) on the alignment questions, teacher-forced after each model's direct prompt.
Dev rows (``dev.csv``) and each evaluated setting (``eval_parts/``) are kept: a rerun with a
larger grid scores only what is new (keys, splits and nulls are seeded, so kept rows are the
ones a full rerun would give).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import MapBank, open_direction, write_keeping_reading
from analysis.real_pair_data import problem_sets
from unlock_lens.align.layers import LayerPairing
from unlock_lens.diagnostics.fidelity import greedy_reference, likelihood_fidelity, pack_fidelity
from unlock_lens.evaluate.runner import DEFAULT_STOP_STRINGS
from unlock_lens.model_info import ModelInfo
from unlock_lens.pack import CapabilityPack
from unlock_lens.steer import Steering
from unlock_lens.unlock import Unlock

OUT = Path(__file__).parent / "results" / "real_pair_fidelity"
DEFAULT = ("tokens+last", "svd", 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n-key", type=int, default=64)
    p.add_argument("--n-align", type=int, default=64)
    p.add_argument("--n-dev", type=int, default=8, help="dev problems per evaluation set")
    p.add_argument("--n-eval", type=int, default=12, help="held-out problems per evaluation set")
    p.add_argument("--kinds", default="last,tokens+last")
    p.add_argument("--methods", default="svd,procrustes")
    p.add_argument("--ranks", default="16,64")
    p.add_argument("--alphas", default="0.02,0.05")
    p.add_argument("--keep", type=int, default=1, help="settings kept per alpha from dev")
    p.add_argument("--per-kind", action="store_true", help="also evaluate every data kind's best dev setting")
    p.add_argument("--also", default="", help="settings to evaluate as well, e.g. 'continuations|svd|256,...'")
    p.add_argument("--n-nulls", type=int, default=30)
    p.add_argument("--tokens", type=int, default=16, help="reference continuation length (raw greedy tokens, no stop strings)")
    p.add_argument("--max-pairs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true")
    return p.parse_args(argv)


def pack_of(key: Any, maps: Any, target: Any) -> CapabilityPack:
    return CapabilityPack(key=key, maps=maps, target=ModelInfo.of(target))


@dataclass
class Setup:
    """One direction opened: both models, the source key, the target's own key, the map bank
    and the dev / held-out problems, all from the run's seeds."""

    out: Path
    t0: float
    log: Any
    target: Any
    key_qs: list[str]
    key: Any
    native: Any
    bank: MapBank
    dev: list[Any]
    held: list[Any]
    locked: Any
    unlocked: Any


def setup(args: argparse.Namespace) -> Setup:
    d = open_direction(args)
    pipe, target = d.pipe, d.pipe.target
    ns = argparse.Namespace(seed=args.seed, n_dev=args.n_dev, n_eval=args.n_eval)
    dev, held = problem_sets(ns, d.key_qs + d.align_qs)
    key = pipe.extract(d.key_qs)
    native = Unlock(target, target, protocol="library").extract(d.key_qs)
    bank = MapBank(pipe.locked, pipe.target_variant, d.align_qs,
                   LayerPairing.by_depth(key.source.n_layers, int(target.cfg.n_layers)), args.max_pairs,
                   unlocked=pipe.unlocked, continuation_tokens=64, continuation_stop=DEFAULT_STOP_STRINGS)
    locked = pipe.target_variant.format
    return Setup(d.out, d.t0, d.log, target, d.key_qs, key, native, bank, dev, held, locked,
                 locked.cot_counterpart())


def run_direction(args: argparse.Namespace) -> Path:
    s = setup(args)
    out, t0, log, target = s.out, s.t0, s.log, s.target
    key, native, bank, dev, held = s.key, s.native, s.bank, s.dev, s.held
    locked, unlocked = s.locked, s.unlocked
    tok = target.tokenizer
    # the references are the raw greedy tokens: under its own key Gemma often opens a new
    # "Question:", which the stop strings would cut to nothing (counted in run.json)
    decoding = dict(max_new_tokens=args.tokens, stop_strings=())
    alphas = [float(a) for a in args.alphas.split(",")]
    settings = [(k, m, int(r)) for k in args.kinds.split(",") for m in args.methods.split(",")
                for r in args.ranks.split(",")]
    log("keys ready;", len(settings), "settings x", len(alphas), "alphas on dev")

    dev_prompts = locked.render_all([p.question for p in dev], tok)
    dev_path = out / "dev.csv"
    kept = pd.read_csv(dev_path) if dev_path.exists() else pd.DataFrame(columns=["alpha", "data", "method", "map_rank", "F_dev"])
    done = {(float(r.alpha), r.data, r.method, int(r.map_rank)) for r in kept.itertuples()}
    dev_rows, cut = kept.to_dict("records"), {}
    for a in alphas:
        nat = Steering(native.directions, a)
        ref = greedy_reference(target, dev_prompts, name="native", steering=nat, **decoding)
        cut[a] = sum(not text[: text.find(stop)].strip() for text in ref.texts
                     for stop in DEFAULT_STOP_STRINGS[:1] if stop in text) / len(ref.texts)
        cands = {f"{k}|{m}|{r}": pack_of(key, bank(k, m, min(r, bank.n_fit(k))), target).steering(a)
                 for k, m, r in settings if (a, k, m, r) not in done}
        if not cands:
            continue
        report = likelihood_fidelity(target, ref, native=nat, candidates=cands, progress=f"dev alpha {a}")
        for row in report.summary(n_boot=200).to_dict("records"):
            if row["kind"] == "candidate":
                k, m, r = row["condition"].split("|")
                dev_rows.append({"alpha": a, "data": k, "method": m, "map_rank": int(r), "F_dev": row["F"]})
        pd.DataFrame(dev_rows).to_csv(dev_path, index=False)
    dev_table = pd.DataFrame(dev_rows)
    grid = {(k, m, r) for k, m, r in settings}
    dev_table = dev_table[[(d, m, int(r)) in grid for d, m, r in
                           zip(dev_table.data, dev_table.method, dev_table.map_rank, strict=True)]]
    picks = dev_table.sort_values("F_dev", ascending=False).groupby("alpha").head(args.keep)
    log("dev picks:", picks.to_dict("records"))

    held_prompts = locked.render_all([p.question for p in held], tok)
    held_unlocked = unlocked.render_all([p.question for p in held], tok)
    eval_rows, parts = [], out / "eval_parts"
    parts.mkdir(exist_ok=True)
    for a in alphas:
        chosen = [(r.data, r.method, int(r.map_rank), "dev pick") for r in picks[picks.alpha == a].itertuples()]
        if args.per_kind:
            at_a = dev_table[dev_table.alpha == a].sort_values("F_dev", ascending=False)
            chosen += [(r.data, r.method, int(r.map_rank), f"best {r.data} on dev")
                       for r in at_a.groupby("data").head(1).itertuples()
                       if not any(c[:3] == (r.data, r.method, int(r.map_rank)) for c in chosen)]
        for extra in filter(None, args.also.split(",")):
            k, m, r = extra.split("|")
            if not any(c[:3] == (k, m, int(r)) for c in chosen):
                chosen.append((k, m, int(r), "asked (--also)"))
        if not any(c[:3] == DEFAULT for c in chosen):
            chosen.append((*DEFAULT, "shipped default"))
        for k, m, r, why in chosen:
            part = parts / f"{a:g}_{k}_{m}_{r}.csv"
            if not part.exists():
                pack = pack_of(key, bank(k, m, min(r, bank.n_fit(k))), target)
                rep = pack_fidelity(target, pack, native.directions, held_prompts, alpha=a,
                                    unlocked_prompts=held_unlocked, references=("native",),
                                    n_nulls=args.n_nulls, progress=True, **decoding)["native"]
                pd.DataFrame(rep.summary().to_dict("records")).to_csv(part, index=False)
                log(f"alpha {a} {k} {m} {r}: done")
            rows = pd.read_csv(part, keep_default_na=False, na_values=[""]).to_dict("records")
            eval_rows += [{"alpha": a, "data": k, "method": m, "map_rank": r, "why": why, **row} for row in rows]
    pd.DataFrame(eval_rows).to_csv(out / "eval.csv", index=False)
    (out / "run.json").write_text(json.dumps({
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_dev_problems": len(dev), "n_eval_problems": len(held), "seconds": round(time.perf_counter() - t0),
        "native_reference_cut_to_blank_by_stop": cut},
        indent=1))
    log("done")
    return out


def _f(x: Any, spec: str = ".2f") -> str:
    return "" if x is None or x != x else format(x, spec)


def report(args: argparse.Namespace) -> Path:
    lines = ["# The real pair decided by likelihood fidelity", "",
             "Command: `python -m analysis.real_pair_fidelity` per direction, then `--report`. "
             "F = (LL_key - LL_unsteered) / (LL_native - LL_unsteered) of the target's own-key greedy "
             "continuations (the native reference); rank and p among random-mapped null directions "
             "(the unit of the test is the direction); KL = first-token KL to the target's CoT prompt, "
             "ranked among the same nulls (lower is closer). Rule, fixed before the run: a setting "
             "carries the behaviour when p <= 0.05 on F.", ""]
    for run in sorted(p for p in args.out.iterdir() if (p / "eval.csv").exists()):
        meta = json.loads((run / "run.json").read_text())
        ev = pd.read_csv(run / "eval.csv", keep_default_na=False, na_values=[""])  # kind "null" is no NaN
        lines += [f"## {run.name.replace('_to_', ' → ')}", "",
                  f"{meta['n_eval_problems']} held-out SVAMP + MultiArith problems, {meta['tokens']}-token "
                  f"references, {meta['n_nulls']} nulls per setting; dev picks on {meta['n_dev_problems']} "
                  f"other problems ({meta['seconds']} s).", "",
                  "| alpha | data | method | map rank | why | condition | F [95% CI] | rank / nulls | p | KL | KL rank | nulls F median / q95 / max |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (a, k, m, r, why), g in ev.groupby(["alpha", "data", "method", "map_rank", "why"], sort=False):
            q = g[g.kind == "null"].set_index("condition").F
            nulls = f"{_f(q.get('nulls q0.5'))} / {_f(q.get('nulls q0.95'))} / {_f(q.get('nulls q1'))}"
            for row in g[g.kind != "null"].itertuples():
                lines.append(f"| {a:g} | {k} | {m} | {r} | {why} | {row.condition} | {_f(row.F)} "
                             f"[{_f(row.F_lo)}, {_f(row.F_hi)}] | {int(row.rank)} / {int(row.n_nulls)} | "
                             f"{_f(row.p, '.3f')} | {_f(row.first_token_kl, '.3f')} | {int(row.kl_rank)} | {nulls} |")
        lines.append("")
    path = args.out.parent / "real_pair_fidelity.md"
    return write_keeping_reading(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(report(args) if args.report else run_direction(args))


if __name__ == "__main__":
    main()
