"""Measure every organism target and write ``analysis/results/organisms.md`` (+ ``.json``).

    .venv/bin/python -m analysis.organisms [--n-test 300] [--n-dev 100] [--seeds 8]

All method logic lives in unlock_lens (``unlock_lens.organisms.demo`` helpers call
extract_masterkey / align_key / Steering); this script wires the sweeps:

1. base models: direct vs ``STEP`` trigger on held-out short chains (``test`` split), and the
   trigger-free step rate on long chains (the content-driven mode);
2. same-model UNLOCK (own key, no trigger), alpha chosen on the ``dev`` split;
3. cross-model UNLOCK both directions for three alignment regimes (trigger-free,
   contrast-inclusive, task-agnostic): method x rank x alpha swept on ``dev``, the dev-best
   setting measured on ``test`` with random-direction controls (same per-layer norms, several
   seeds) and the cosine of the transferred key to the target's native key;
4. the model-driven key (chain-s-post minus chain-s, plain prompts) beside the prompt-driven one;
5. mechanism checks (shuffled pairs, centred fits, minus the mean state);
6. the hard pair: both directions aligned on the paper's data (``short-only``: locked short
   chains, the kind the key is extracted on), for each alignment data kind (``last``,
   ``tokens``, ``tokens+last``, ``continuations``: the source's ``STEP``-triggered outputs on
   those chains teacher-forced after the plain prompt, ``continuations+last``) the method x
   rank x alpha sweep on ``dev`` and the dev-best setting on ``test`` beside random controls and
   the cosine to the native key. ``--hard-only [--hard-kinds K,...]`` reruns only this section
   for those kinds and merges them into the existing ``organisms.json`` (every other number
   kept; the keys and splits are seeded, so they are the ones the full run used).

Key questions come from the ``key`` split, alignment questions from ``align``, selection from
``dev``, reported numbers from ``test``: four disjoint held-out splits never seen in training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unlock_lens.activations import Variant, capture
from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps, map_directions
from unlock_lens.alignment_data import generate_continuations, parse_data, plan_pairs
from unlock_lens.evaluate.stats import wilson_interval
from unlock_lens.organisms import LONG_OPS, SHORT_OPS, generate_problems, load_organism
from unlock_lens.organisms.demo import (
    align_questions,
    cosine_to_native,
    evaluate,
    model_key,
    prompt_key,
    random_controls,
    self_pack,
    transfer,
)
from unlock_lens.organisms.task import LOCKED, UNLOCKED
from unlock_lens.steer import Steering

OUT = Path(__file__).parent / "results"
ALPHAS = (0.1, 0.2, 0.5, 1.0, 2.0)
RANKS = (4, 16, 64)
METHODS = ("svd", "procrustes", "ridge")
REGIMES = ("trigger-free", "contrast-inclusive", "task-agnostic")
HARD_REGIME = "short-only"  # the paper's data: locked prompts of the kind the key is extracted on
HARD_KINDS = ("last", "tokens", "tokens+last", "continuations", "continuations+last")


def fmt_acc(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.1%} [{lo:.1%}, {hi:.1%}]"


def rec(res: Any) -> dict[str, Any]:
    lo, hi = res.interval()
    return {"n": res.n, "k": res.n_correct, "acc": res.accuracy, "lo": lo, "hi": hi,
            "step": res.step_rate, "n_step": res.n_step}


def fits(method: str, rank: int, src: Any, tgt: Any) -> bool:
    """Procrustes needs rank <= min(d_src, d_tgt); every other (method, rank) is fitted."""
    return method != "procrustes" or rank <= min(int(src.cfg.d_model), int(tgt.cfg.d_model))


def count_pairs(src: Any, tgt: Any, qs: list[str], data: str) -> int:
    """How many (source, target) state pairs alignment data ``data`` gives on ``qs``
    (continuations: the source's under the ``STEP`` trigger, as ``transfer`` makes them)."""
    conts = (generate_continuations(Variant(src, UNLOCKED), qs, batch_size=128)
             if "continuations" in parse_data(data) else None)
    plans = plan_pairs(Variant(src, LOCKED), Variant(tgt, LOCKED), qs, data, continuations=conts)
    return sum(len(p.source_positions) for p in plans)


def dev_sweep(key: Any, native: Any, src: Any, tgt: Any, qs: list[str], dev: list[Any],
              settings: list[tuple[str, int]], *, data: str = "last",
              desc: str = "method x rank") -> list[dict[str, Any]]:
    """Dev accuracy of every (method, rank) x alpha map fitted on ``qs`` with ``data``, and the
    mean cosine of its key to the native key (a map that misses the key is recorded as an error)."""
    sweep: list[dict[str, Any]] = []
    for method, rank in tqdm(settings, desc=desc, unit="map"):
        if not fits(method, rank, src, tgt):
            continue
        try:
            dirs = transfer(key, src, tgt, qs, AlignSpec(method, rank, data=data)).target_directions()
        except Exception as err:  # a map can miss the key (zero direction): record it
            sweep.append({"method": method, "rank": rank, "error": str(err)[:120]})
            continue
        cos = cosine_to_native(dirs, native)
        for a in ALPHAS:
            acc = evaluate(tgt, dev, LOCKED, Steering(dirs, alpha=a)).accuracy
            sweep.append({"method": method, "rank": rank, "alpha": a, "dev_acc": acc,
                          "cos_native": sum(cos.values()) / len(cos)})
    return sweep


def measure_best(key: Any, native: Any, src: Any, tgt: Any, qs: list[str], test: list[Any],
                 sweep: list[dict[str, Any]], seeds: Any, *, data: str = "last",
                 desc: str = "random controls") -> dict[str, Any]:
    """The dev-best setting of ``sweep`` (ties: smaller alpha) refitted and measured on ``test``,
    beside random directions of the same per-layer norms (one per seed)."""
    ok = [s for s in sweep if "dev_acc" in s]
    best = max(ok, key=lambda s: (s["dev_acc"], -s["alpha"]))
    dirs = transfer(key, src, tgt, qs, AlignSpec(best["method"], int(best["rank"]), data=data)
                    ).target_directions()
    res = evaluate(tgt, test, LOCKED, Steering(dirs, alpha=best["alpha"]))
    ctl = [rec(evaluate(tgt, test, LOCKED, c))
           for c in tqdm(random_controls(dirs, best["alpha"], seeds), desc=desc, unit="seed")]
    return {"best": best, "test": rec(res), "random": ctl,
            "random_mean": sum(c["acc"] for c in ctl) / len(ctl),
            "random_max": max(c["acc"] for c in ctl),
            "cos_native": cosine_to_native(dirs, native), "sweep": sweep}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--n-dev", type=int, default=100)
    ap.add_argument("--n-key", type=int, default=64)
    ap.add_argument("--n-align", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=8, help="random-direction control seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--skip-sweep", action="store_true", help="only the default settings")
    ap.add_argument("--hard-only", action="store_true",
                    help="rerun only section 6 (the hard pair) and merge it into the existing organisms.json")
    ap.add_argument("--hard-kinds", default=",".join(HARD_KINDS), help="alignment data kinds of section 6")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m analysis.organisms", *sys.argv[1:]])
    if args.hard_only:
        R: dict[str, Any] = json.loads((args.out / "organisms.json").read_text())
        differ = [k for k in ("n_test", "n_dev", "n_key", "n_align", "seeds", "skip_sweep")
                  if R["args"][k] != str(getattr(args, k))]
        if differ:
            raise SystemExit(f"--hard-only: {differ} differ from the full run's {R['args']}: pass the same")
        R["hard_command"] = command
    else:
        R = {"args": {k: str(v) for k, v in vars(args).items()}, "command": command}

    def save() -> None:
        R["hard_seconds" if args.hard_only else "seconds"] = round(time.perf_counter() - t0, 1)
        (args.out / "organisms.json").write_text(json.dumps(R, indent=1) + "\n")

    def log(*a: Any) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s]", *a, flush=True)

    names = ("chain-s", "chain-m", "chain-s-post")
    models = {n: load_organism(n) for n in names}
    test = generate_problems(args.n_test, split="test", n_ops=SHORT_OPS)
    dev = generate_problems(args.n_dev, split="dev", n_ops=SHORT_OPS)
    if args.hard_only:
        keys = {n: prompt_key(models[n], args.n_key) for n in ("chain-s", "chain-m")}
        hard_pair(R, models, keys, dev, test, args, save, log)
        return
    long_test = generate_problems(args.n_test, split="test", n_ops=LONG_OPS)

    # 1. base models
    R["base"] = {}
    for n, m in tqdm(models.items(), desc="base models", unit="model"):
        R["base"][n] = {
            "direct": rec(evaluate(m, test, LOCKED)),
            "trigger": rec(evaluate(m, test, UNLOCKED)),
            "long_plain": rec(evaluate(m, long_test, LOCKED)),
        }
        log("base", n, {k: round(v["acc"], 3) for k, v in R["base"][n].items()})
    save()

    # 2. same-model UNLOCK (own prompt-driven key), alpha on dev
    keys = {n: prompt_key(models[n], args.n_key) for n in ("chain-s", "chain-m")}
    R["same"] = {}
    for n, key in keys.items():
        m = models[n]
        dev_acc = {a: evaluate(m, dev, LOCKED, self_pack(key, m, a)).accuracy
                   for a in tqdm(ALPHAS, desc=f"{n}: alpha on dev", unit="alpha")}
        best = max(ALPHAS, key=lambda a: (dev_acc[a], -a))
        res = evaluate(m, test, LOCKED, self_pack(key, m, best))
        prompt_pos = evaluate(m, test, LOCKED, Steering(
            {layer: key.direction(layer) for layer in key.layers}, alpha=best, positions="prompt"))
        all_pos = evaluate(m, test, LOCKED, Steering(
            {layer: key.direction(layer) for layer in key.layers}, alpha=best, positions="all"))
        R["same"][n] = {"dev": dev_acc, "alpha": best, "test": rec(res),
                        "positions_prompt": rec(prompt_pos), "positions_all": rec(all_pos),
                        "effective_rank": key.effective_rank}
        log("same", n, best, rec(res))
    save()

    # 3. cross-model, both directions, three regimes
    R["cross"] = {}
    for s_name, t_name in (("chain-s", "chain-m"), ("chain-m", "chain-s")):
        src, tgt = models[s_name], models[t_name]
        key, native = keys[s_name], keys[t_name]
        pair = f"{s_name}->{t_name}"
        R["cross"][pair] = {}
        for regime in REGIMES:
            qs = align_questions(regime, args.n_align)
            settings = ([(m, r) for m in METHODS for r in RANKS] if not args.skip_sweep
                        else [("svd", 16)])
            sweep = dev_sweep(key, native, src, tgt, qs, dev, settings,
                              desc=f"{pair} {regime}: method x rank")
            R["cross"][pair][regime] = measure_best(
                key, native, src, tgt, qs, test, sweep, range(args.seeds),
                desc=f"{pair} {regime}: random controls")
            best = R["cross"][pair][regime]["best"]
            res = R["cross"][pair][regime]["test"]
            log("cross", pair, regime, best, res["acc"],
                "random mean", round(R["cross"][pair][regime]["random_mean"], 3))
            save()

    # 4. model-driven key: chain-s-post minus chain-s (plain prompts)
    base, post = models["chain-s"], models["chain-s-post"]
    mkey = model_key(base, post, args.n_key)
    R["model_driven"] = {}
    dev_acc = {a: evaluate(base, dev, LOCKED, self_pack(mkey, base, a)).accuracy
               for a in tqdm(ALPHAS, desc="model-driven key: alpha on dev", unit="alpha")}
    a_best = max(ALPHAS, key=lambda a: (dev_acc[a], -a))
    R["model_driven"]["chain-s (same model)"] = {
        "dev": dev_acc, "alpha": a_best,
        "test": rec(evaluate(base, test, LOCKED, self_pack(mkey, base, a_best))),
        "cos_prompt_key": cosine_to_native({layer: mkey.direction(layer) for layer in mkey.layers},
                                           keys["chain-s"]),
    }
    log("model-driven same", R["model_driven"]["chain-s (same model)"]["test"]["acc"])
    tgt = models["chain-m"]
    qs = align_questions("trigger-free", args.n_align)
    sweep = []
    for rank in tqdm(RANKS, desc="model-driven key: rank", unit="map"):
        dirs = transfer(mkey, base, tgt, qs, AlignSpec("svd", rank)).target_directions()
        cos = cosine_to_native(dirs, keys["chain-m"])
        for a in ALPHAS:
            sweep.append({"method": "svd", "rank": rank, "alpha": a,
                          "dev_acc": evaluate(tgt, dev, LOCKED, Steering(dirs, alpha=a)).accuracy,
                          "cos_native": sum(cos.values()) / len(cos)})
    best = max(sweep, key=lambda s: (s["dev_acc"], -s["alpha"]))
    dirs = transfer(mkey, base, tgt, qs, AlignSpec("svd", int(best["rank"]))).target_directions()
    ctl = [rec(evaluate(tgt, test, LOCKED, c))
           for c in tqdm(random_controls(dirs, best["alpha"], range(args.seeds)),
                         desc="model-driven key: random controls", unit="seed")]
    R["model_driven"]["chain-s->chain-m (trigger-free fit)"] = {
        "best": best, "test": rec(evaluate(tgt, test, LOCKED, Steering(dirs, alpha=best["alpha"]))),
        "random": ctl, "random_mean": sum(c["acc"] for c in ctl) / len(ctl),
        "random_max": max(c["acc"] for c in ctl),
        "cos_native": cosine_to_native(dirs, keys["chain-m"]), "sweep": sweep,
    }
    log("model-driven cross", R["model_driven"]["chain-s->chain-m (trigger-free fit)"]["test"])
    save()

    # 5. mechanism checks on the trigger-free regime: a fit on shuffled pairs (the rows of the
    # source no longer match the target's), centred fits, and the target's own minus-mean state
    R["checks"] = {}
    for s_name, t_name in tqdm((("chain-s", "chain-m"), ("chain-m", "chain-s")),
                               desc="mechanism checks", unit="pair"):
        src, tgt = models[s_name], models[t_name]
        pair = f"{s_name}->{t_name}"
        a = R["cross"][pair]["trigger-free"]["best"]["alpha"]
        out: dict[str, Any] = {"alpha": a}
        for regime in REGIMES:
            dirs = transfer(keys[s_name], src, tgt, align_questions(regime, args.n_align),
                            AlignSpec("svd", 16, centered=True)).target_directions()
            out[f"centred svd-16, {regime}"] = {
                "test": rec(evaluate(tgt, test, LOCKED, Steering(dirs, alpha=a))),
                "cos": cosine_to_native(dirs, keys[t_name])}
        qs = align_questions("trigger-free", args.n_align)
        shuffled = list(qs)
        random.Random(0).shuffle(shuffled)
        H_s = capture(src, LOCKED.render_all(qs), None)
        H_t = capture(tgt, LOCKED.render_all(shuffled), None)
        pairing = LayerPairing.by_depth(int(src.cfg.n_layers), int(tgt.cfg.n_layers))
        maps = fit_layer_maps(H_s[:, pairing.source_layers], H_t, pairing, AlignSpec("svd", rank=16))
        dirs = map_directions(keys[s_name], maps)
        out["shuffled-pairs svd-16, trigger-free"] = {
            "test": rec(evaluate(tgt, test, LOCKED, Steering(dirs, alpha=a))),
            "cos": cosine_to_native(dirs, keys[t_name])}
        H = capture(tgt, LOCKED.render_all(qs), None)
        negmean = {t: -H[:, t].mean(0) for t in range(H.shape[1])}
        out["minus mean target state"] = {
            "test": rec(evaluate(tgt, test, LOCKED, Steering(negmean, alpha=a))),
            "cos": cosine_to_native(negmean, keys[t_name])}
        R["checks"][pair] = out
        log("checks", pair, {k: v["test"]["acc"] for k, v in out.items() if k != "alpha"})
        save()

    hard_pair(R, models, keys, dev, test, args, save, log)


def hard_pair(R: dict[str, Any], models: dict[str, Any], keys: dict[str, Any], dev: list[Any],
              test: list[Any], args: argparse.Namespace, save: Any, log: Any) -> None:
    """6. the hard pair: the paper's alignment data (locked short chains only), by data kind;
    kinds already in ``R["hard"]`` and not in ``--hard-kinds`` are kept."""
    R.setdefault("hard", {})
    qs = align_questions(HARD_REGIME, args.n_align)
    for s_name, t_name in (("chain-s", "chain-m"), ("chain-m", "chain-s")):
        src, tgt = models[s_name], models[t_name]
        pair = f"{s_name}->{t_name}"
        R["hard"].setdefault(pair, {})
        for data in args.hard_kinds.split(","):
            settings = ([(m, r) for m in METHODS for r in RANKS] if not args.skip_sweep
                        else [("svd", 16)])
            sweep = dev_sweep(keys[s_name], keys[t_name], src, tgt, qs, dev, settings, data=data,
                              desc=f"hard {pair} {data}: method x rank")
            out = measure_best(keys[s_name], keys[t_name], src, tgt, qs, test, sweep,
                               range(args.seeds), data=data, desc=f"hard {pair} {data}: random")
            out["n_pairs"] = count_pairs(src, tgt, qs, data)
            R["hard"][pair][data] = out
            log("hard", pair, data, out["best"], out["test"]["acc"],
                "random mean", round(out["random_mean"], 3))
            save()
    write_markdown(R, args.out / "organisms.md")
    log("wrote", args.out / "organisms.md")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _acc(r: dict[str, Any]) -> str:
    return fmt_acc(r["k"], r["n"])


def _sweep_table(title: str, sweep: list[dict[str, Any]]) -> list[str]:
    """Dev accuracy by (method, rank) x alpha, with the map's mean cosine to the native key."""
    L = [f"**{title}**", "", _row(["method", "rank", "cos", *ALPHAS]),
         _row(["---"] * (3 + len(ALPHAS)))]
    cells: dict[tuple[str, int], dict[float, float]] = {}
    coss: dict[tuple[str, int], float] = {}
    for s in sweep:
        if "dev_acc" in s:
            cells.setdefault((s["method"], s["rank"]), {})[s["alpha"]] = s["dev_acc"]
            coss[(s["method"], s["rank"])] = s["cos_native"]
    for (m, r), v in cells.items():
        L.append(_row([m, r, f"{coss[(m, r)]:.2f}", *(f"{v.get(a, float('nan')):.0%}" for a in ALPHAS)]))
    errors = [f"{s['method']} {s['rank']}: {s['error']}" for s in sweep if "error" in s]
    return L + ([f"Maps that missed the key: {'; '.join(errors)}."] if errors else []) + [""]


def _hard_markdown(R: dict[str, Any]) -> list[str]:
    """The hard pair's table (each data kind's dev-best setting on test) and its dev sweeps."""
    L = ["## Hard pair: the paper's alignment data (locked short chains only)", "",
         f"Maps fitted on `{R['args']['n_align']}` locked short chains of the `align` split "
         f"(`align_questions(\"{HARD_REGIME}\")`: the kind of prompt the key is extracted on, "
         "all answered directly, so the key's direction does not vary across them), for each "
         "alignment data kind; method x rank x alpha chosen on `dev`, measured on `test`. The "
         "first row of each pair is the target steered with its own (native) key. `continuations`: "
         "the source's own outputs on these chains under the `STEP` trigger (its step traces), "
         "appended to the plain (locked) prompt and read by both organisms, every continuation "
         "position paired (one tokenizer).", "",
         *([f"Rows rerun with `{R['hard_command']}` ({R['hard_seconds']} s); the other sections "
            "are the full run's.", ""] if "hard_command" in R else []),
         _row(["pair", "alignment data (pairs)", "dev-best (method, rank, alpha)", "dev acc",
               "target direct", "UNLOCK test", "gain", "step", "random mean (max) of seeds",
               "cos to native key (per layer)", "mean cos"]), _row(["---"] * 11)]
    for pair, kinds in R["hard"].items():
        t_name = pair.split("->")[1]
        d = R["base"][t_name]["direct"]["acc"]
        same = R["same"][t_name]
        L.append(_row([pair, "native key (no map)", f"alpha {same['alpha']}", "", f"{d:.1%}",
                       _acc(same["test"]), f"{(same['test']['acc'] - d) * 100:+.1f}",
                       f"{same['test']['step']:.1%}", "", "1.00", "1.00"]))
        for data, c in kinds.items():
            b, cos = c["best"], list(c["cos_native"].values())
            L.append(_row([pair, f"{data} ({c['n_pairs']})",
                           f"{b['method']}, {b['rank']}, {b['alpha']}", f"{b['dev_acc']:.0%}",
                           f"{d:.1%}", _acc(c["test"]), f"{(c['test']['acc'] - d) * 100:+.1f}",
                           f"{c['test']['step']:.1%}",
                           f"{c['random_mean']:.1%} ({c['random_max']:.1%}), {len(c['random'])} seeds",
                           ", ".join(f"{v:.2f}" for v in cos), f"{sum(cos) / len(cos):.2f}"]))
    L += ["", "### Hard pair dev sweeps (accuracy on dev; mean cosine to the native key)", ""]
    for pair, kinds in R["hard"].items():
        for data, c in kinds.items():
            L += _sweep_table(f"{pair}, {HARD_REGIME}, data {data}", c["sweep"])
    return L


def write_markdown(R: dict[str, Any], path: Path) -> None:
    L = ["# Organisms: measured targets", "",
         f"Command: `{R['command']}` ({R['seconds']} s). Greedy decoding; short held-out chains "
         "(4-5 ops) of the `test` split; accuracy = exact final answer, Wilson 95% CI; step = "
         "step-format rate. Settings (alpha, method, rank) chosen on the disjoint `dev` split.", ""]
    L += ["## Base models", "",
          _row(["model", "n", "direct", "direct step", "trigger", "trigger step",
                "long chains, no trigger (acc / step)"]), _row(["---"] * 7)]
    for n, b in R["base"].items():
        L.append(_row([n, b["direct"]["n"], _acc(b["direct"]), f"{b['direct']['step']:.1%}",
                       _acc(b["trigger"]), f"{b['trigger']['step']:.1%}",
                       f"{b['long_plain']['acc']:.1%} / {b['long_plain']['step']:.1%}"]))
    L += ["", "## Same-model UNLOCK (own key, no trigger in the prompt)", "",
          _row(["model", "alpha (dev)", "dev acc by alpha", "test acc", "step",
                "positions=prompt", "positions=all (generated tokens too)"]), _row(["---"] * 7)]
    for n, s in R["same"].items():
        L.append(_row([n, s["alpha"], ", ".join(f"{a}: {v:.0%}" for a, v in s["dev"].items()),
                       _acc(s["test"]), f"{s['test']['step']:.1%}",
                       f"{s['positions_prompt']['acc']:.1%} (step {s['positions_prompt']['step']:.0%})",
                       f"{s['positions_all']['acc']:.1%} (step {s['positions_all']['step']:.0%})"]))
    L += ["", "## Cross-model UNLOCK by alignment regime", "",
          _row(["pair", "regime", "dev-best (method, rank, alpha)", "target direct", "UNLOCK test",
                "gain", "step", "random mean (max) of seeds", "cos to native key (per layer)"]),
          _row(["---"] * 9)]
    for pair, regs in R["cross"].items():
        t_name = pair.split("->")[1]
        d = R["base"][t_name]["direct"]["acc"]
        for regime, c in regs.items():
            b = c["best"]
            L.append(_row([pair, regime, f"{b['method']}, {b['rank']}, {b['alpha']}", f"{d:.1%}",
                           _acc(c["test"]), f"{(c['test']['acc'] - d) * 100:+.1f}",
                           f"{c['test']['step']:.1%}",
                           f"{c['random_mean']:.1%} ({c['random_max']:.1%}), {len(c['random'])} seeds",
                           ", ".join(f"{v:.2f}" for v in c["cos_native"].values())]))
    L += ["", "### Dev sweeps (accuracy on dev; mean cosine of the transferred key to the native key)", ""]
    for pair, regs in R["cross"].items():
        for regime, c in regs.items():
            L += _sweep_table(f"{pair}, {regime}", c["sweep"])
    md = R["model_driven"]
    same = md["chain-s (same model)"]
    cross = md["chain-s->chain-m (trigger-free fit)"]
    L += ["## Model-driven key (chain-s-post minus chain-s) beside the prompt-driven key", "",
          _row(["key", "applied to", "setting (dev)", "test acc", "step", "random mean (max)",
                "cos"]), _row(["---"] * 7),
          _row(["prompt-driven", "chain-s (own)", f"alpha {R['same']['chain-s']['alpha']}",
                _acc(R["same"]["chain-s"]["test"]), f"{R['same']['chain-s']['test']['step']:.1%}",
                "", ""]),
          _row(["model-driven", "chain-s (own)", f"alpha {same['alpha']}", _acc(same["test"]),
                f"{same['test']['step']:.1%}", "",
                "to prompt key: " + ", ".join(f"{v:.2f}" for v in same["cos_prompt_key"].values())]),
          _row(["prompt-driven", "chain-m (trigger-free fit)",
                "{method}, {rank}, {alpha}".format(**R["cross"]["chain-s->chain-m"]["trigger-free"]["best"]),
                _acc(R["cross"]["chain-s->chain-m"]["trigger-free"]["test"]),
                f"{R['cross']['chain-s->chain-m']['trigger-free']['test']['step']:.1%}",
                f"{R['cross']['chain-s->chain-m']['trigger-free']['random_mean']:.1%} "
                f"({R['cross']['chain-s->chain-m']['trigger-free']['random_max']:.1%})", ""]),
          _row(["model-driven", "chain-m (trigger-free fit)",
                f"svd, {cross['best']['rank']}, {cross['best']['alpha']}", _acc(cross["test"]),
                f"{cross['test']['step']:.1%}",
                f"{cross['random_mean']:.1%} ({cross['random_max']:.1%})",
                "to native: " + ", ".join(f"{v:.2f}" for v in cross["cos_native"].values())]), ""]
    if "checks" in R:
        L += ["## Mechanism checks (trigger-free regime unless named; alpha = the pair's dev-best)", "",
              _row(["pair", "direction", "test acc", "step", "cos to native key"]), _row(["---"] * 5)]
        for pair, out in R["checks"].items():
            for name, c in out.items():
                if name == "alpha":
                    continue
                L.append(_row([pair, name, _acc(c["test"]), f"{c['test']['step']:.1%}",
                               ", ".join(f"{v:.2f}" for v in c["cos"].values())]))
        L.append("")
    if "hard" in R:
        L += _hard_markdown(R)
    path.write_text("\n".join(L) + "\n" + _other_sections(path, [x for x in L if x.startswith("## ")]))


def _other_sections(path: Path, own: list[str]) -> str:
    """The ``## `` sections of ``path`` that other scripts keep there (e.g. ``fidelity_organisms``'
    calibration), as they are: rewriting this script's tables leaves them in place."""
    if not path.exists():
        return ""
    parts = path.read_text().split("\n## ")[1:]
    return "".join("\n## " + part for part in parts if "## " + part.split("\n", 1)[0] not in own)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown-only"]:  # re-render the table from organisms.json
        write_markdown(json.loads((OUT / "organisms.json").read_text()), OUT / "organisms.md")
    else:
        main()
