"""vLLM backend vs the torch path (GPU only): same greedy tokens, and tokens/s side by side.

For each steering (the paper's default ``rotate``/``last_prompt`` on the ``hook`` engine, and
``raw``/``all`` on both engines) it generates greedily on the torch path
(``unlock_lens.generation.generate`` on a CUDA bridge) and on vLLM, and reports the share of
prompts whose token ids match exactly, the first-divergence position, and tokens/s.
Run in float32 for a token-exact comparison (bf16 kernels differ between engines).

    python -m benchmarks.bench_vllm --model smollm2-135m-instruct [--quick] [--tp 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import header, make_prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--tp", type=int, default=1, help="tensor_parallel_size")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("[skip] bench_vllm needs a CUDA GPU (and `pip install 'unlock-lens[vllm]'`)")
        return
    from unlock_lens.activations import _token_lengths, encode, length_sorted_batches
    from unlock_lens.backends.vllm import VLLMSteeredGenerator
    from unlock_lens.generation import generate
    from unlock_lens.models import load_model, resolve_model_dir
    from unlock_lens.steer import Steering

    n = args.n or (16 if args.quick else 128)
    new = args.max_new_tokens or (32 if args.quick else 128)
    header("bench_vllm")
    path = str(resolve_model_dir(args.model))
    bridge = load_model(path, device="cuda")
    prompts = make_prompts(n, 30)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(int(bridge.cfg.n_layers), int(bridge.cfg.d_model), generator=g)
    cases = {
        "rotate/last_prompt (paper)": ("hook", Steering(dirs, alpha=args.alpha)),
        "raw/all (hook)": ("hook", Steering(dirs, alpha=0.5, normalisation="raw", positions="all")),
        "raw/all (affine)": ("affine", Steering(dirs, alpha=0.5, normalisation="raw", positions="all")),
    }
    ids = {}
    for idx in length_sorted_batches(_token_lengths(bridge, prompts), 1):
        row, mask = encode(bridge, [prompts[idx[0]]])
        ids[idx[0]] = row[0][mask[0].bool()].tolist()
    token_ids = [ids[i] for i in range(n)]

    def torch_tokens(steering):
        t0 = time.perf_counter()
        gens = generate(bridge, prompts, steering=steering, max_new_tokens=new, batch_size=16)
        dt = time.perf_counter() - t0
        toks = [bridge.tokenizer(gg.text, add_special_tokens=False)["input_ids"] for gg in gens]
        return toks, sum(gg.n_tokens for gg in gens) / dt

    for engine in ("hook", "affine"):
        with VLLMSteeredGenerator(path, engine=engine, tensor_parallel_size=args.tp) as gen:
            for label, (eng, steering) in cases.items():
                if eng != engine:
                    continue
                ref, torch_rate = torch_tokens(steering)
                t0 = time.perf_counter()
                out = gen.generate(token_ids, steering=steering, max_new_tokens=new)
                dt = time.perf_counter() - t0
                eos = bridge.tokenizer.eos_token_id
                out = [o[: o.index(eos)] if eos in o else o for o in out]
                same = sum(a == b for a, b in zip(out, ref, strict=True)) / n
                print(f"-- {label}: exact token match {same:.1%}; tokens/s torch {torch_rate:.0f}"
                      f" vs vLLM {sum(map(len, out)) / dt:.0f}")


if __name__ == "__main__":
    main()
