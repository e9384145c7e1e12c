"""A layer-band x rank x alpha sweep end to end, against the matmul floor measured in the same run.

The grid: 18 layer bands (width 3 centred on each of Gemma-3-270M's 18 layers, clipped at the
ends) x 5 map ranks (1, 2, 4, 8, 16) x 6 alphas (0.05-2.0) = 540 configurations of the
SmolLM2-135M-Instruct -> Gemma-3-270M CoT key (the `unlock-lens run` pair and formats:
GSM8K-train key / alignment / evaluation questions from its disjoint splits, the key on the
source's own locked vs CoT prompts), each scored on 64 evaluation prompts: KL to the target's
CoT-prompted next-token distribution and log p(its top 5 tokens), as the ablation sweeps do.

Stages (all timed): load both models; extract the key; ``prepare_ablation`` (captures of the
alignment questions on both models once, the reference and unsteered logits); the maps,
fitted once per rank from those captures (svd, last-token data, uncentred: the sweeps' own
path, not `run`'s tokens+last data); then **the grid**: the evaluation prompts' prefix cache
once and every configuration through ``AblationSetup.scores_of`` (the path every sweep in
``diagnostics.ablations`` takes): configurations side by side on the shared cache, up to
``STREAMED_MAX_ROWS`` rows a forward, the forward stopped at the unembedding's input and the
262k-token vocabulary read out in chunks into KL and log p (``diagnostics.readout``), so no
logits are held.

The floor: ``torch.mm`` of two 2048 x 2048 float32 matrices, timed on the same device, threads
and load between the grid's chunks (median of the samples). Useful work: a configuration costs
2 x (non-embedding parameters + d_model x vocab) FLOPs per prompt (every weight once, the
unembedding for one position); the prefix cache 2 x non-embedding parameters per prefix token.
Floor time = useful FLOPs / matmul rate. Reported: one-position scoring rate as a fraction of
the matmul rate (target >= 0.7), grid wall time / floor time (target <= 1.4), peak memory.

    python -m benchmarks.bench_sweep                    # the 540 x 64 grid on Gemma-3-270M
    python -m benchmarks.bench_sweep --quick            # random-small models, 36 configs x 16 prompts
    python -m benchmarks.bench_sweep --device cuda      # the same on a GPU (bench_gpu runs it there)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import RssPeak, header, machine, random_model_dir

RANKS = (1, 2, 4, 8, 16)
ALPHAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
MM_SIZE = 2048


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def mm_rate(device: str, n: int = MM_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of one float32 ``torch.mm`` of two n x n matrices (best of ``repeats``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bands(n_layers: int, n_bands: int, width: int = 3) -> list[list[int]]:
    """``n_bands`` contiguous bands of ``width`` layers, centred on evenly spaced layers."""
    centres = sorted({round(i * (n_layers - 1) / max(1, n_bands - 1)) for i in range(n_bands)})
    half = width // 2
    return [list(range(max(0, c - half), min(n_layers, c + half + 1))) for c in centres]


def load_on(name: str, device: str):
    """A registry model, or ``random-small`` (built once), as a bridge on ``device``."""
    from unlock_lens.models import load_model

    return load_model(str(random_model_dir(small=True)) if name == "random-small" else name, device=device)


def useful_flops(model) -> tuple[int, int]:
    """(FLOPs of one next-token prediction at one position, FLOPs per prefix token)."""
    hf = model.original_model
    emb = hf.get_input_embeddings().weight
    non_embedding = sum(p.numel() for p in hf.parameters()) - emb.numel()
    if hf.get_output_embeddings() is not None and hf.get_output_embeddings().weight is not emb:
        non_embedding -= hf.get_output_embeddings().weight.numel()  # untied: not a block weight
    d, vocab = emb.shape[1], emb.shape[0]
    return 2 * (non_embedding + d * vocab), 2 * non_embedding


def questions(n_key: int, n_align: int, n_eval: int, seed: int = 0) -> tuple[list, list, list]:
    """The `unlock-lens run` splits of GSM8K train: key, alignment and dev (evaluation)."""
    from unlock_lens.cli import _questions

    return (_questions("gsm8k", "train", "key", n_key, seed),
            _questions("gsm8k", "train", "align", n_align, seed),
            _questions("gsm8k", "train", "dev", n_eval, seed))


def synthetic_questions(n_key: int, n_align: int, n_eval: int) -> tuple[list, list, list]:
    from benchmarks._common import make_prompts

    qs = make_prompts(n_key + n_align + n_eval, 40)
    return qs[:n_key], qs[n_key : n_key + n_align], qs[n_key + n_align :]


def run(args: argparse.Namespace) -> dict:
    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.diagnostics.ablations import prepare_ablation
    from unlock_lens.diagnostics.readout import ACCELERATOR_SIZES, STREAMED_MAX_ROWS
    from unlock_lens.prompts import get_format
    from unlock_lens.unlock import Unlock

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        print(f"   [{time.perf_counter() - t0:6.0f} s] {text}", flush=True)

    stage(f"loading {args.source} and {args.target}")
    source, target = load_on(args.source, args.device), load_on(args.target, args.device)
    timings["load"] = time.perf_counter() - t0

    stage(f"the key from {args.source} on {args.n_key} questions")
    t = time.perf_counter()
    pipe = Unlock(source=source, target=target, method="svd")
    key_q, align_q, eval_q = (synthetic_questions if args.quick else questions)(
        args.n_key, args.n_align, args.n_prompts)
    key = pipe.extract(key_q)
    timings["key"] = time.perf_counter() - t

    stage(f"captures of {args.n_align} alignment questions; reference logits of {args.n_prompts} prompts")
    t = time.perf_counter()
    unlocked = get_format("cot").as_chat(pipe.target_variant.format.chat)
    setup = prepare_ablation(key, pipe.locked, pipe.target_variant, align_q, eval_q,
                             unlocked_format=unlocked, spec=AlignSpec("svd", rank=max(args.ranks),
                                                                      centered=False),
                             batch_size=args.batch_size)
    timings["captures + reference logits"] = time.perf_counter() - t

    t = time.perf_counter()
    ranks = [r for r in args.ranks if r <= setup.rank_limit]
    directions = {r: setup.directions(rank=r) for r in ranks}  # maps fitted once per rank
    timings["maps (once per rank)"] = time.perf_counter() - t

    n_layers = int(target.cfg.n_layers)
    grid = [setup.steering(directions[r], band, a)
            for r in ranks for band in bands(n_layers, args.bands) for a in args.alphas]
    if args.configs:
        grid = grid[: args.configs]
    per_config, per_prefix_token = useful_flops(target)
    n = len(eval_q)

    stage(f"the grid: {len(grid)} configurations x {len(eval_q)} prompts")
    rates = [mm_rate(args.device)]
    t_score = 0.0
    kl_means = []
    with RssPeak() as rss:
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t_grid = time.perf_counter()
        prefix = setup.prefix()
        sync(args.device)
        t_prefix = time.perf_counter() - t_grid
        stream = setup.scores_of(grid)
        last_sample = time.perf_counter()
        for k in range(len(grid)):
            if k % 60 == 0:
                so_far = f", scoring {k * n * per_config / t_score / 1e9:.1f} GFLOP/s" if k else ""
                stage(f"configuration {k}/{len(grid)} (matmul median {statistics.median(rates):.1f} "
                      f"GFLOP/s{so_far})")
            t = time.perf_counter()
            kl, _ = next(stream)  # KL and log p of the configuration: the logits are never held
            sync(args.device)
            t_score += time.perf_counter() - t
            kl_means.append(float(kl.mean()))
            if time.perf_counter() - last_sample > args.sample_every:
                t = time.perf_counter()
                rates.append(mm_rate(args.device))
                t_grid += time.perf_counter() - t  # the floor samples are not grid time
                last_sample = time.perf_counter()
        wall = time.perf_counter() - t_grid
    rates.append(mm_rate(args.device))
    stage("done")
    rate = statistics.median(rates)
    prefix_tokens = sum(int(b.mask.sum()) - len(b.indices) for b in prefix.batches)
    flops_configs = len(grid) * n * per_config
    flops_prefix = prefix_tokens * per_prefix_token
    rows = max(len(b.indices) for b in prefix.batches)
    cuda_peak = (torch.cuda.max_memory_allocated() / 2**20) if args.device.startswith("cuda") else None
    return {
        "timings": timings, "configs": len(grid), "n": n, "ranks": ranks, "bands": args.bands,
        "alphas": list(args.alphas), "batch": args.batch_size,
        "rows_per_forward": rows * max(1, (STREAMED_MAX_ROWS if args.device == "cpu" else ACCELERATOR_SIZES[0]) // rows),
        "prefix_batch": rows,
        "tokens": f"{prefix_tokens / n + 1:.0f}", "mm_rate": rate, "mm_min": min(rates),
        "mm_max": max(rates), "mm_samples": len(rates),
        "t_prefix": t_prefix, "t_score": t_score, "wall": wall,
        "score_rate": flops_configs / t_score / 1e9, "prefix_rate": flops_prefix / t_prefix / 1e9,
        "floor": (flops_configs + flops_prefix) / (rate * 1e9),
        "per_config": t_score / len(grid),
        "rss_peak_mb": rss.delta_mb, "cuda_peak_mb": cuda_peak,
        "kv_mb": sum(t.numel() * t.element_size() for b in prefix.batches if b.kv is not None
                     for layer in b.kv.layers for t in (layer.keys, layer.values)) / 2**20,
        "kl_range": (min(kl_means), max(kl_means)),
        "model": args.target, "source": args.source, "threads": torch.get_num_threads(),
        "device": args.device,
    }


def report(r: dict, command: str) -> str:
    m = machine()
    score_frac = r["score_rate"] / r["mm_rate"]
    ratio = r["wall"] / r["floor"]
    mem = f"{r['rss_peak_mb']:.0f} MiB RSS above the set-up"
    if r["cuda_peak_mb"] is not None:
        mem += f", {r['cuda_peak_mb']:.0f} MiB CUDA peak allocated"
    lines = [
        "### sweep at the matmul floor (`bench_sweep`)", "",
        f"Command: `{command}`. Machine: {m['cpu']}, {m['logical_cores']} logical cores, device "
        f"{r['device']}, torch threads {r['threads']}, torch {m['torch']}, transformers "
        f"{m['transformers']}; load average {m['load_avg_1m']} at the end.", "",
        f"{r['source']} -> {r['model']}: {r['configs']} configurations ({r['bands']} layer bands x "
        f"ranks {r['ranks']} x alphas {r['alphas']}) x {r['n']} prompts (~{r['tokens']} tokens), "
        f"set-up batch {r['batch']}, prefix-cache batches of {r['prefix_batch']} prompts, up to "
        f"{r['rows_per_forward']} rows (configurations x prompts) per forward.", "",
        "| stage | time |", "|---|---|",
        *[f"| {k} | {v:.1f} s |" for k, v in r["timings"].items()],
        f"| grid: prefix cache | {r['t_prefix']:.1f} s ({r['prefix_rate']:.1f} GFLOP/s) |",
        f"| grid: scoring, KL and log p included ({r['per_config']:.3f} s / configuration) | "
        f"{r['t_score']:.1f} s |",
        f"| **grid end to end** | **{r['wall']:.1f} s** |", "",
        f"- matmul floor: torch.mm {MM_SIZE}^3 float32, median {r['mm_rate']:.1f} GFLOP/s "
        f"(min {r['mm_min']:.1f}, max {r['mm_max']:.1f}, {r['mm_samples']} samples through the run)",
        f"- one-position scoring (with the KL and log p reduction): {r['score_rate']:.1f} GFLOP/s = "
        f"**{score_frac:.2f} of the matmul rate** (target >= 0.7)",
        f"- grid end to end {r['wall']:.1f} s vs floor {r['floor']:.1f} s = **{ratio:.2f}x** "
        "(target <= 1.4)",
        f"- peak memory: {mem}; the prefix cache holds {r['kv_mb']:.0f} MiB of keys and values",
        f"- mean KL over the grid ranges {r['kl_range'][0]:.3f}-{r['kl_range'][1]:.3f} nats",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="random-small source and target, synthetic prompts, 6 bands x 2 ranks x "
                        "3 alphas x 16 prompts (a smoke test)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--source", default=None)
    p.add_argument("--target", default=None)
    p.add_argument("--n-prompts", type=int, default=None, help="evaluation prompts (default 64)")
    p.add_argument("--n-key", type=int, default=None, help="key questions (default 64)")
    p.add_argument("--n-align", type=int, default=None, help="alignment questions (default 64)")
    p.add_argument("--bands", type=int, default=None, help="layer bands (default 18)")
    p.add_argument("--ranks", type=int, nargs="+", default=None)
    p.add_argument("--alphas", type=float, nargs="+", default=None)
    p.add_argument("--batch-size", type=int, default=16,
                   help="prompts per batch of the set-up's captures and logits (the prefix cache "
                        "takes at most STREAMED_PREFIX_BATCH of them)")
    p.add_argument("--configs", type=int, default=0, help="score only the first N configurations")
    p.add_argument("--sample-every", type=float, default=20.0,
                   help="seconds between matmul-rate samples during the grid")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--markdown", type=Path, default=None, help="write the results section here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.source = args.source or ("random-small" if args.quick else "smollm2-135m-instruct")
    args.target = args.target or ("random-small" if args.quick else "gemma-3-270m")
    args.n_prompts = args.n_prompts or (16 if args.quick else 64)
    args.n_key = args.n_key or (8 if args.quick else 64)
    args.n_align = args.n_align or (16 if args.quick else 64)
    args.bands = args.bands or (6 if args.quick else 18)
    args.ranks = args.ranks or ((1, 4) if args.quick else RANKS)
    args.alphas = args.alphas or ((0.1, 0.5, 2.0) if args.quick else ALPHAS)
    header("bench_sweep")
    r = run(args)
    text = report(r, "python -m benchmarks.bench_sweep " + " ".join(sys.argv[1:]))
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
