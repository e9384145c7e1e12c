"""Peak RSS of ``activations.capture`` over prompt count and sequence length.

Each (prompts, length) point runs in a fresh process (psutil sampling thread; peak above the
loaded-model level). The result tensor is ``n x layers x d_model`` float32, so the peak must
grow with prompts at about ``layers * d_model * 4`` bytes a prompt, and its slope must not
depend on sequence length (per-batch activations are transient: a constant in n).

    python -m benchmarks.bench_memory [--quick]
"""

from __future__ import annotations

import argparse
import json

from benchmarks._common import RssPeak, header, load, make_prompts, run_worker


def worker(args: argparse.Namespace) -> None:
    from unlock_lens.activations import capture

    model = load(args.model)
    prompts = make_prompts(args.n, args.words)
    n_tok = sum(len(model.tokenizer(p)["input_ids"]) for p in prompts)
    with RssPeak() as rss:
        out = capture(model, prompts, batch_size=args.batch_size)
    print(json.dumps({"peak_mb": rss.delta_mb, "result_mb": out.numel() * 4 / 2**20,
                      "mean_tokens": n_tok / args.n, "L": int(model.cfg.n_layers),
                      "d": int(model.cfg.d_model)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small model, fewer prompts (< 2 min)")
    p.add_argument("--model", default=None, help="random, random-small or a registry name")
    p.add_argument("--counts", type=int, nargs=2, default=None, help="two prompt counts")
    p.add_argument("--words", type=int, nargs=2, default=None, help="two prompt lengths (words)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--word-count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.model = args.model or ("random-small" if args.quick else "random")
    if args.worker:
        args.words = args.word_count
        return worker(args)
    counts = args.counts or ([250, 1000] if args.quick else [250, 1000])
    words = args.words or ([8, 32] if args.quick else [8, 64])
    header("bench_memory")
    print(f"   model={args.model} counts={counts} words={words} batch_size={args.batch_size}")
    res = {}
    for w in words:
        for n in counts:
            res[n, w] = run_worker("benchmarks.bench_memory", [
                "--model", args.model, "--n", str(n), "--word-count", str(w),
                "--batch-size", str(args.batch_size),
            ])
            r = res[n, w]
            print(f"   n={n:5d} words={w:3d} (~{r['mean_tokens']:.0f} tok): peak +{r['peak_mb']:7.1f} MiB"
                  f" (result tensor {r['result_mb']:.1f} MiB)")
    r0 = res[counts[0], words[0]]
    expect = r0["L"] * r0["d"] * 4 / 2**20 * 1000
    dn = counts[1] - counts[0]
    for w in words:
        slope = (res[counts[1], w]["peak_mb"] - res[counts[0], w]["peak_mb"]) / dn * 1000
        print(f"   slope over prompts at words={w:3d}: {slope:7.1f} MiB per 1000 prompts "
              f"(L*d*4 bytes -> {expect:.1f})")
    dw = words[1] - words[0]
    for n in counts:
        slope = (res[n, words[1]]["peak_mb"] - res[n, words[0]]["peak_mb"]) / dw
        print(f"   slope over length at n={n:5d}: {slope:7.2f} MiB per extra word "
              "(transient per-batch activations: should not scale with n)")


if __name__ == "__main__":
    main()
