"""Restricted-vocabulary first-token measures against the full vocabulary, on the real pair.

SmolLM2-135M-Instruct's CoT key (library protocol: direct vs CoT prompt, ``--n-key`` GSM8K-train
``key`` questions) is mapped into Gemma-3-270M (``last`` data, svd rank ``--rank``, ``--n-align``
``align`` questions); on ``--n`` GSM8K-train ``dev`` questions the target's direct prompt is
scored from one prefix cache for every configuration: unsteered; the transferred key, three
random-mapped directions (random source directions of the key's norms through the same maps)
and one isotropic random direction, each at every alpha of ``--alphas``. The reference is the
target's CoT-prompted next-token distribution.

For each ``k`` the KL and entropy of the restricted vocabulary (:mod:`unlock_lens.diagnostics.
restricted_vocab`) are compared with the full vocabulary's: per configuration, the error of the
mean over prompts (what a sweep cell reports) and the largest per-prompt error. Timing: the
measures of one configuration's logits (full vs restricted, median of ``--repeats``
interleaved runs over all configurations) beside the one-position steered forward itself.

    python -m benchmarks.bench_restricted_vocab [--n 32] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import header, med

KS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="smollm2-135m-instruct")
    p.add_argument("--target", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=32, help="scored GSM8K-train dev questions")
    p.add_argument("--n-key", type=int, default=32)
    p.add_argument("--n-align", type=int, default=64)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alphas", default="0.05,0.1,0.2,0.5")
    p.add_argument("--ks", default=",".join(map(str, KS)))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.01, help="nats; the largest error a default k may make")
    p.add_argument("--json", type=Path, default=None, help="write the per-k table here as JSON")
    p.add_argument("--csv", type=Path, default=None, help="write the per-configuration errors here")
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


def configurations(pack, alphas: list[float]) -> dict[str, object]:
    from unlock_lens.diagnostics.distribution_shift import mapped_random_like
    from unlock_lens.steer import Steering

    out: dict[str, object] = {"unsteered": None}
    for a in alphas:
        base = pack.steering(a)
        out[f"key a={a}"] = base
        for s in range(3):
            out[f"random-mapped a={a} s={s}"] = Steering(mapped_random_like(pack, s), a, base.normalisation,
                                                         base.positions, None, base.hook)
        out[f"random a={a}"] = base.randomized(0)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from unlock_lens import Unlock
    from unlock_lens.activations import final_logits
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.diagnostics.cached_scoring import prefix_cache, score_last_position
    from unlock_lens.diagnostics.restricted_vocab import FirstTokenReference
    from unlock_lens.evaluate import TRAIN_SPLIT_FRACTIONS, load_dataset, split_problems
    from unlock_lens.models import load_model
    from unlock_lens.prompts import get_format

    t0 = time.perf_counter()
    parts = split_problems(load_dataset("gsm8k", "train"), TRAIN_SPLIT_FRACTIONS, seed=0)
    qs = {role: [p.question for p in parts[role][:n]]
          for role, n in (("key", args.n_key), ("align", args.n_align), ("dev", args.n))}
    src, tgt = load_model(args.source), load_model(args.target)
    pipe = Unlock(source=src, target=tgt)
    key = pipe.extract(qs["key"])
    pack = pipe.align(key, qs["align"], AlignSpec("svd", args.rank, data="last"))
    locked = pipe.target_variant.format
    unlocked = get_format("cot").as_chat(locked.chat)
    direct = locked.render_all(qs["dev"], tgt.tokenizer)
    reference = final_logits(tgt, unlocked.render_all(qs["dev"], tgt.tokenizer),
                             special_tokens=locked.special_tokens)
    cache = prefix_cache(tgt, direct, special_tokens=locked.special_tokens)
    setup_s = time.perf_counter() - t0
    alphas = [float(a) for a in args.alphas.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    full_ref = FirstTokenReference(reference)
    refs = {k: FirstTokenReference(reference, k) for k in ks}
    rows, forward_s, logits_of = [], [], {}
    for name, steering in configurations(pack, alphas).items():
        t = time.perf_counter()
        logits = score_last_position(tgt, cache, steering)
        forward_s.append(time.perf_counter() - t)
        logits_of[name] = logits
        full = full_ref.measures(logits)
        for k, ref in refs.items():
            got = ref.measures(logits)
            for m in ("kl", "entropy"):
                err = full[m] - got[m]
                rows.append({"config": name, "group": name.split(" a=")[0], "k": k, "support": int(ref.support.numel()), "measure": m,
                             "full_mean": float(full[m].mean()), "err_mean": float(err.mean()),
                             "err_prompt_max": float(err.abs().max())})
    table = pd.DataFrame(rows)
    # timing: every configuration's measures, full and each k, interleaved, --repeats times
    times: dict[str, list[float]] = {"full": [], **{str(k): [] for k in ks}}
    for _ in range(args.repeats):
        for label, ref in [("full", full_ref), *((str(k), refs[k]) for k in ks)]:
            t = time.perf_counter()
            for logits in logits_of.values():
                ref.measures(logits)
            times[label].append((time.perf_counter() - t) / len(logits_of))
    table["rel_err"] = table["err_mean"].abs() / table["full_mean"].abs().clip(lower=1e-9)

    def per_k(part: pd.DataFrame) -> pd.DataFrame:
        kl, ent = part[part.measure == "kl"], part[part.measure == "entropy"]
        return pd.DataFrame({
            "support": kl.groupby("k")["support"].max(),
            "kl_err_key": kl[kl.group.isin(["key", "unsteered"])].groupby("k")["err_mean"].max(),
            "kl_err_all": kl.groupby("k")["err_mean"].max(),
            "kl_rel_err_all": kl.groupby("k")["rel_err"].max(),
            "entropy_err_key": ent[ent.group.isin(["key", "unsteered"])].groupby("k")["err_mean"].max(),
            "entropy_err_all": ent.groupby("k")["err_mean"].max(),
        }).reset_index()

    summary = per_k(table)
    summary["measure_s"] = [med(times[str(k)]) for k in summary["k"]]
    summary["speedup_vs_full"] = med(times["full"]) / summary["measure_s"]
    ok = summary[summary["kl_err_key"] <= args.tolerance]
    chosen = int(ok["k"].min()) if len(ok) else None
    fwd = med(forward_s)
    header("restricted-vocabulary first-token measures")
    lines = [f"{args.source} -> {args.target}, {args.n} GSM8K-train dev prompts, "
             f"{len(logits_of)} configurations (alphas {alphas}), vocabulary {reference.shape[-1]}; "
             f"setup {setup_s:.0f} s", "",
             f"one-position steered forward per configuration: median {fwd:.3f} s; "
             f"full-vocabulary measures: median {med(times['full']):.4f} s per configuration", "",
             summary.to_markdown(index=False, floatfmt=".4g"), "",
             "errors: full minus restricted, of a configuration's mean over prompts, the largest over "
             "the transferred key at every alpha and the unsteered prompt (`_key`) or over every "
             "configuration, random controls included (`_all`; `kl_rel_err_all`: that error over the "
             "full KL)", "",
             f"smallest k whose largest KL error over the key and unsteered configurations <= "
             f"{args.tolerance} nats: {chosen}"]
    if chosen is not None:
        row = summary[summary.k == chosen].iloc[0]
        lines.append(f"at k={chosen}: measures {row.speedup_vs_full:.1f}x faster; per configuration "
                     f"(forward + measures) {(fwd + med(times['full'])) / (fwd + row.measure_s):.2f}x")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary.to_dict("records"), "chosen_k": chosen,
                                         "forward_s": fwd, "full_measure_s": med(times["full"])}, indent=1))


if __name__ == "__main__":
    main()
