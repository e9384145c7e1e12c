"""Capture throughput and memory: ``activations.capture`` vs a bare HF forward vs full cache.

All three variants run the same length-sorted, left-padded batches of the same prompts
(``forward_batches``' order). ``capture`` hooks ``blocks.{l}.hook_resid_post`` at every layer
and keeps the final token; the bare HF forward is ``bridge.original_model(ids, mask)`` with
no hooks (the floor); the naive variant is ``bridge.run_with_cache`` per batch, keeping the
final token of each ``resid_post`` from the full cache. Timings are interleaved round-robin;
peak RSS is measured in a fresh subprocess per variant (psutil sampling thread).

    python -m benchmarks.bench_capture [--quick] [--models random smollm2-135m-instruct ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks._common import (
    REAL_MODELS,
    RssPeak,
    header,
    interleaved,
    load,
    make_prompts,
    med,
    ratio_line,
    run_worker,
    spread,
)

VARIANTS = ("capture", "hf_forward", "run_with_cache")


def _batches(model, prompts: list[str], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from unlock_lens.activations import _token_lengths, encode, length_sorted_batches

    out = []
    for idx in length_sorted_batches(_token_lengths(model, prompts), batch_size):
        out.append(encode(model, [prompts[i] for i in idx]))
    return out


def variants(model, prompts: list[str], batch_size: int) -> dict:
    """The three callables, each over all prompts; returns the final-token residuals."""
    from unlock_lens.activations import capture, position_ids

    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    batches = _batches(model, prompts, batch_size)

    def run_capture():
        return capture(model, prompts, batch_size=batch_size)

    def run_hf():
        with torch.inference_mode():
            for ids, mask in batches:
                model.original_model(input_ids=ids, attention_mask=mask)

    def run_cache():
        rows = []
        with torch.inference_mode():
            for ids, mask in batches:
                _, cache = model.run_with_cache(
                    ids, attention_mask=mask, position_ids=position_ids(mask)
                )
                rows.append(torch.stack([cache[n][:, -1].float() for n in names], 1))
                del cache
        return torch.cat(rows)

    return {"capture": run_capture, "hf_forward": run_hf, "run_with_cache": run_cache}


def worker(args: argparse.Namespace) -> None:
    """One variant in this (fresh) process: peak RSS above the post-load level."""
    model = load(args.model)
    prompts = make_prompts(args.n, args.words)
    fn = variants(model, prompts, args.batch_size)[args.variant]
    with RssPeak() as rss:
        fn()
    print(json.dumps({"peak_mb": rss.delta_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (< 2 min)")
    p.add_argument("--models", nargs="+", default=None, help="random and/or registry names")
    p.add_argument("--n", type=int, default=None, help="prompts per run")
    p.add_argument("--words", type=int, default=None, help="about this many words a prompt")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="random", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="capture", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.n = args.n or (16 if args.quick else 64)
    args.words = args.words or (12 if args.quick else 30)
    if args.worker:
        return worker(args)
    models = args.models or (["random"] if args.quick else ["random", *REAL_MODELS])
    repeats = args.repeats or 3

    header("bench_capture")
    print(f"   prompts={args.n} words~{args.words} batch_size={args.batch_size} repeats={repeats}")
    for name in models:
        model = load(name)
        if model is None:
            continue
        prompts = make_prompts(args.n, args.words)
        fns = variants(model, prompts, args.batch_size)
        ref = fns["run_with_cache"]()
        got = fns["capture"]()
        from unlock_lens.activations import _token_lengths, length_sorted_batches

        lengths = _token_lengths(model, prompts)
        order = [i for idx in length_sorted_batches(lengths, args.batch_size) for i in idx]
        same = torch.allclose(got[order], ref, atol=1e-4, rtol=1e-4)
        n_tok = sum(int(m.sum()) for _, m in _batches(model, prompts, args.batch_size))
        t = interleaved(fns, repeats)
        print(f"-- {name}: L={model.cfg.n_layers} d={model.cfg.d_model} tokens={n_tok} "
              f"capture==run_with_cache: {same}")
        for k in VARIANTS:
            print(f"   {k:<16} {spread(t[k])}  {n_tok / med(t[k]):9.0f} tok/s")
        print(ratio_line("throughput capture / bare HF forward", med(t["hf_forward"]),
                         med(t["capture"]), "(target >= 0.9)"))
        print(ratio_line("throughput capture / run_with_cache", med(t["run_with_cache"]),
                         med(t["capture"])))
        del model
        if args.no_memory:
            continue
        mem = {
            v: run_worker("benchmarks.bench_capture", [
                "--model", name, "--variant", v, "--n", str(args.n), "--words", str(args.words),
                "--batch-size", str(args.batch_size),
            ])["peak_mb"]
            for v in VARIANTS
        }
        for k in VARIANTS:
            print(f"   peak RSS above loaded model, {k:<16} {mem[k]:8.1f} MiB")
        print(ratio_line("peak RSS run_with_cache / capture", mem["run_with_cache"],
                         max(mem["capture"], 1e-9)))


if __name__ == "__main__":
    main()
