"""The generation table beside the real pair's F table: held-out outputs against >= 10 random-mapped directions.

    python -m analysis.real_pair_generation --source smollm2-135m-instruct --target gemma-3-270m
    python -m analysis.real_pair_generation --source gemma-3-270m --target smollm2-135m-instruct
    python -m analysis.real_pair_generation --report   # -> section of analysis/results/real_pair_fidelity.md

Run after :mod:`analysis.real_pair_fidelity` for the same direction (it reads that run's
``dev.csv``: the dev pick per alpha). Same seeds, so the same key, maps and held-out problems
(``--n-eval`` SVAMP + ``--n-eval`` MultiArith) as the F table. Per alpha, greedy outputs
(``--max-new-tokens``, the library's stop strings) under: the direct prompt, the CoT prompt,
the target's own key (native), the transferred key through the shipped default's maps
(``tokens+last``, svd, rank 256) and through the dev pick's, and ``--n-random`` random-mapped
directions (the source key's per-layer norms, through the default's maps).

Measures per condition (``evaluate.results.behaviour``): the degenerate kinds (blank, cut by the
stop string, near-loop, loop), the CoT-format rate among the rest beside the stricter share with
two or more arithmetic steps, accuracy, and the share of outputs equal to the native key's.
The unit of the comparison with random is the direction: for each measure the key's rank among
itself and the random-mapped directions, and their spread (min / median / max). Rule, fixed
before the run: a key moves a measure when it lies outside the whole random range (rank 1 of
n + 1, one-sided p = 1 / (n + 1): 0.09 at 10 nulls, the most this size can show).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import write_keeping_reading
from analysis.real_pair_fidelity import DEFAULT, OUT, pack_of, setup
from unlock_lens.evaluate.results import behaviour
from unlock_lens.evaluate.runner import Decoding, evaluate

MEASURES = ("degenerate_rate", "blank_rate", "cut_by_stop_rate", "near_loop_rate", "loop_rate",
            "cot_rate_non_degenerate", "multi_step_rate_non_degenerate", "accuracy", "same_as_native")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n-key", type=int, default=64)
    p.add_argument("--n-align", type=int, default=64)
    p.add_argument("--n-dev", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=12)
    p.add_argument("--alphas", default="0.02,0.05")
    p.add_argument("--n-random", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--max-pairs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true")
    return p.parse_args(argv)


def rows_to_table(rows: list[dict[str, Any]], native_outputs: dict[str, str]) -> pd.DataFrame:
    """One line per (alpha, condition, seed): the behaviour measures and the native-equal share."""
    frame = pd.DataFrame(rows)
    out = []
    for (a, cond, seed), g in frame.groupby(["alpha", "condition", "seed"], dropna=False, sort=False):
        recs = g.to_dict("records")
        same = [r["output"] == native_outputs.get(f"{a}|{r['problem_id']}") for r in recs]
        out.append({"alpha": a, "condition": cond, "seed": seed, **behaviour(recs),
                    "same_as_native": sum(same) / len(same)})
    return pd.DataFrame(out)


def run_direction(args: argparse.Namespace) -> Path:
    s = setup(args)
    dev_table = pd.read_csv(s.out / "dev.csv")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    rows_path = s.out / "generation_rows.jsonl"  # quotes the evaluation questions: not committed
    done = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    have = {(r["alpha"], r["condition"], r["seed"], r.get("setting")) for r in done}

    def run(conditions: tuple[str, ...], pack: Any, alpha: float | None, setting: str | None, seeds=()) -> None:
        todo = [c for c in conditions if not any(h[0] == alpha and h[1] == c and h[3] == setting for h in have)]
        if not todo:
            return
        res = evaluate(s.target, s.held, conditions=todo, pack=pack, alphas=None if alpha is None else [alpha],
                       seeds=list(seeds) or (0,), key_questions=s.key_qs, locked_format=s.locked,
                       unlocked_format=s.unlocked, decoding=decoding, progress=True)
        new = [{**r, "alpha": alpha, "setting": setting} for r in res.rows]
        with rows_path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        done.extend(new)
        have.update((r["alpha"], r["condition"], r["seed"], setting) for r in new)
        s.log(f"alpha {alpha} {setting or ''}: {todo} done")

    default_pack = pack_of(s.key, s.bank(*DEFAULT[:2], min(DEFAULT[2], s.bank.n_fit(DEFAULT[0]))), s.target)
    run(("direct", "cot-prompt"), default_pack, None, None)
    for a in [float(x) for x in args.alphas.split(",")]:
        run(("native-key", "steered"), default_pack, a, "|".join(map(str, DEFAULT)))
        run(("random-mapped",), default_pack, a, "|".join(map(str, DEFAULT)), seeds=range(args.n_random))
        pick = dev_table[dev_table.alpha == a].sort_values("F_dev", ascending=False).iloc[0]
        setting = (pick.data, pick.method, int(pick.map_rank))
        if setting != DEFAULT:
            pack = pack_of(s.key, s.bank(setting[0], setting[1], min(setting[2], s.bank.n_fit(setting[0]))), s.target)
            run(("steered",), pack, a, "|".join(map(str, setting)))
    native = {f"{r['alpha']}|{r['problem_id']}": r["output"] for r in done if r["condition"] == "native-key"}
    for r in done:  # one name per row: the condition, the setting for transferred keys
        r["condition"] = f"transferred {r['setting'].replace('|', ' ')}" if r["condition"] == "steered" else r["condition"]
    table = rows_to_table(done, native)
    table.to_csv(s.out / "generation.csv", index=False)
    (s.out / "generation.json").write_text(json.dumps({
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_eval_problems": len(s.held), "seconds": round(time.perf_counter() - s.t0)}, indent=1))
    s.log("done")
    return s.out


def _f(x: Any) -> str:
    return "" if x is None or x != x else f"{100 * x:.0f}%"


def direction_section(run: Path) -> list[str]:
    g = pd.read_csv(run / "generation.csv")
    meta = json.loads((run / "generation.json").read_text())
    lines = [f"### Generation, {run.name.replace('_to_', ' → ')}", "",
             f"{meta['n_eval_problems']} held-out problems (the F table's), greedy, {meta['max_new_tokens']} "
             f"tokens, stop strings; {meta['n_random']} random-mapped directions through the default's maps "
             f"({meta['seconds']} s). Rank: the condition among itself and the random directions, 1 = highest, "
             f"ties against it (one-sided p = rank / {meta['n_random'] + 1}; the unit is the direction).", "",
             "| alpha | condition | degenerate (blank / cut / near-loop / loop) | CoT format | ≥ 2 steps | accuracy | = native |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    fixed = g[g.alpha.isna()]
    for r in fixed.itertuples():
        lines.append(f"| – | {r.condition} | {_f(r.degenerate_rate)} ({_f(r.blank_rate)} / {_f(r.cut_by_stop_rate)} / "
                     f"{_f(r.near_loop_rate)} / {_f(r.loop_rate)}) | {_f(r.cot_rate_non_degenerate)} | "
                     f"{_f(r.multi_step_rate_non_degenerate)} | {_f(r.accuracy)} | |")
    for a, ga in g[g.alpha.notna()].groupby("alpha"):
        rnd = ga[ga.condition == "random-mapped"]
        for r in ga[ga.condition != "random-mapped"].itertuples():
            cells = []
            for m in ("degenerate_rate", "cot_rate_non_degenerate", "multi_step_rate_non_degenerate", "accuracy",
                      "same_as_native"):
                v = getattr(r, m)
                if v != v:  # no non-degenerate output to measure: nothing to rank
                    cells.append("–")
                    continue
                rank = 1 + int((rnd[m] >= v).sum())  # ties count against the key
                cells.append(f"{_f(v)} ({rank}/{len(rnd) + 1})")
            deg = (f"{cells[0]}: {_f(r.blank_rate)} / {_f(r.cut_by_stop_rate)} / {_f(r.near_loop_rate)} / "
                   f"{_f(r.loop_rate)}")
            lines.append(f"| {a:g} | {r.condition} | {deg} | {cells[1]} | {cells[2]} | {cells[3]} | {cells[4]} |")
        q = rnd[list(MEASURES)].quantile([0, 0.5, 1])
        spread = {m: f"{_f(q[m].iloc[0])}–{_f(q[m].iloc[1])}–{_f(q[m].iloc[2])}" for m in MEASURES}
        lines.append(f"| {a:g} | {len(rnd)} random-mapped, min–median–max | {spread['degenerate_rate']} | "
                     f"{spread['cot_rate_non_degenerate']} | {spread['multi_step_rate_non_degenerate']} | "
                     f"{spread['accuracy']} | {spread['same_as_native']} |")
    return lines + [""]


def report(args: argparse.Namespace) -> Path:
    runs = sorted(p for p in args.out.iterdir() if (p / "generation.csv").exists())
    path = args.out.parent / "real_pair_generation.md"
    lines = ["# The real pair's generation table, beside its F table", "",
             "Command: `python -m analysis.real_pair_generation` per direction (after "
             "`analysis.real_pair_fidelity`), then `--report`. Percentages in brackets: the condition's "
             "rank among itself and the random-mapped directions on that measure (1 = highest; ties "
             "count against it).", ""]
    for run in runs:
        lines += direction_section(run)
    return write_keeping_reading(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(report(args) if args.report else run_direction(args))


if __name__ == "__main__":
    main()
