"""First-token scores of a steering grid: full steered prefills vs one shared prefix cache.

Same model, prompts, batches and configurations for both arms:

- ``full``: ``final_logits(model, prompts, steering=s)`` per configuration (a full prefill of
  every prompt, steered at the last prompt position);
- ``cached``: ``prefix_cache(model, prompts)`` once (the unsteered prompts minus their last
  token), then ``score_last_position(model, cache, s)`` per configuration (a one-position
  forward on a copy of the cache).

Prompts: the first ``--n`` GSM8K-train questions in the UNLOCK authors' ``general-direct``
format (tokenised with the checkpoint's own special tokens); the grid: ``rotate`` at the last
prompt position, alphas x layer sets. Full prefills run for the first ``--full-configs``
configurations only (default 6 on random models, 3 on real ones; a real model's full prefill
takes a minute on a busy 2-core box), so the
full arm's grid time is that median per-configuration time x the grid size; each such
configuration is timed right next to its cached score (alternating order), so the two arms see
the same load. Also reports max |logit difference| between the arms.

    python -m benchmarks.bench_cached_scoring [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from pathlib import Path

import torch

from benchmarks._common import header, load, machine, make_prompts, med

DEFAULT_MODELS = ("random-small", "gemma-3-270m")
ALPHAS = (0.05, 0.1, 0.2, 0.5)


def gsm8k_prompts(model, n: int) -> tuple[list[str], str]:
    """``n`` GSM8K-train questions in ``general-direct``; synthetic prompts if the data is absent."""
    import unlock_lens
    from unlock_lens.prompts import get_format

    try:
        questions = [p.question for p in unlock_lens.load_dataset("gsm8k", "train", limit=n)]
    except Exception as err:  # offline without the data: a stand-in, said so in the output
        print(f"[note] GSM8K train unavailable ({type(err).__name__}); synthetic prompts instead")
        return make_prompts(n, 90), "model"
    fmt = get_format("general-direct")
    return fmt.render_all(questions, model.tokenizer), fmt.special_tokens


def layer_sets(n_layers: int) -> dict[str, list[int]]:
    half = n_layers // 2
    return {"all": list(range(n_layers)), "first half": list(range(half)),
            "second half": list(range(half, n_layers)), "every other": list(range(0, n_layers, 2)),
            "middle": [half]}


def grid(model, seed: int = 0) -> dict[str, object]:
    """Alphas x layer sets of ``rotate`` at the last prompt position (20 configurations)."""
    from unlock_lens.steer import Steering

    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(int(model.cfg.n_layers), int(model.cfg.d_model), generator=g)
    return {f"a={a} {name}": Steering(dirs, alpha=a, layers=layers)
            for name, layers in layer_sets(int(model.cfg.n_layers)).items() for a in ALPHAS}


def token_lengths(model, prompts: list[str], special_tokens: str) -> list[int]:
    from unlock_lens.activations import encode

    return encode(model, prompts, special_tokens=special_tokens)[1].sum(1).tolist()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_model(model, prompts: list[str], special_tokens: str, *, batch_size: int,
              full_configs: int) -> dict:
    """Both arms on one model; times in seconds, the speed-ups and the largest difference."""
    from unlock_lens.activations import final_logits
    from unlock_lens.diagnostics.cached_scoring import prefix_cache, score_last_position

    configs = grid(model)
    warm = prompts[:2]  # first calls load the published tokenizer and warm the kernels
    final_logits(model, warm, special_tokens=special_tokens)
    score_last_position(model, prefix_cache(model, warm, special_tokens=special_tokens))
    cache, t_cache = timed(lambda: prefix_cache(model, prompts, special_tokens=special_tokens,
                                                batch_size=batch_size))
    t_one: list[float] = []
    t_full: list[float] = []
    diff = 0.0
    for k, steering in enumerate(configs.values()):
        cached = lambda s=steering: score_last_position(model, cache, s)  # noqa: E731
        full = lambda s=steering: final_logits(model, prompts, steering=s, batch_size=batch_size,  # noqa: E731
                                               special_tokens=special_tokens)
        if k >= full_configs:
            t_one.append(timed(cached)[1])
            continue
        order = (cached, full) if k % 2 == 0 else (full, cached)
        (a, ta), (b, tb) = timed(order[0]), timed(order[1])
        got, want = (a, b) if k % 2 == 0 else (b, a)
        t_one.append(ta if k % 2 == 0 else tb)
        t_full.append(tb if k % 2 == 0 else ta)
        diff = max(diff, float((got - want).abs().max()))
    plain = float((score_last_position(model, cache) - final_logits(
        model, prompts, batch_size=batch_size, special_tokens=special_tokens)).abs().max())
    n = len(configs)
    full_grid = n * med(t_full) if len(t_full) < n else sum(t_full)
    cached_grid = t_cache + sum(t_one)
    return {"configs": n, "full_configs": len(t_full), "t_cache": t_cache, "t_one": med(t_one),
            "t_full": med(t_full), "full_grid": full_grid, "cached_grid": cached_grid,
            "grid_speedup": full_grid / cached_grid, "per_config_speedup": med(t_full) / med(t_one),
            "max_diff_steered": diff, "max_diff_unsteered": plain}


def markdown(rows: dict[str, dict], meta: dict, command: str) -> str:
    """The results as a markdown section (merged into benchmarks/README.md)."""
    m = machine()
    tl = version("transformer-lens")
    lines = [
        "### cached first-token scoring (`bench_cached_scoring`)", "",
        f"Command: `{command}`. Machine: {m['cpu']}, {m['logical_cores']} logical cores, "
        f"torch threads {meta['threads']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"transformer-lens {tl}; load average {m['load_avg_1m']} at the end "
        "(shared box: only the ratios are meaningful).", "",
        f"{meta['n']} GSM8K-train questions in `general-direct`, batch {meta['batch_size']}; a grid "
        "of 20 configurations (`rotate` at the last prompt position, alphas 0.05/0.1/0.2/0.5 x "
        "5 layer sets). Grid time: full = median full-prefill time per configuration x 20 (the "
        "first n configurations timed, each next to its cached score, alternating order); cached = "
        "one prefix cache + 20 one-position scores, all timed. Per config: median full prefill / "
        "median one-position score. Max abs diff: cached vs full logits over the n timed "
        "configurations, and unsteered.", "",
        "| model | tokens/prompt (min-mean-max) | prefix cache | one-position score / config "
        "| full prefill / config (n timed) | grid: full / cached | per config | max abs diff "
        "steered / unsteered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['tokens']} | {r['t_cache']:.2f} s | {r['t_one']:.2f} s "
            f"| {r['t_full']:.2f} s ({r['full_configs']}) | **{r['grid_speedup']:.1f}x** "
            f"| {r['per_config_speedup']:.1f}x | {r['max_diff_steered']:.1e} / "
            f"{r['max_diff_unsteered']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="random-small only, 16 prompts")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--n", type=int, default=None, help="prompts (default 32; --quick 16)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--full-configs", type=int, default=None,
                   help="configurations also scored by full prefills (default 6 on random "
                        "models, 3 on real ones)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest for one-position calls on a shared box)")
    p.add_argument("--markdown", type=Path, default=None, help="write the results section here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (16 if args.quick else 32)
    models = args.models or (["random-small"] if args.quick else list(DEFAULT_MODELS))
    header("bench_cached_scoring")
    print(f"   prompts={n} batch_size={args.batch_size} threads={args.threads}")
    rows: dict[str, dict] = {}
    for name in models:
        model = load(name)
        if model is None:
            continue
        prompts, special = gsm8k_prompts(model, n)
        lengths = token_lengths(model, prompts, special)
        full_configs = args.full_configs or (6 if name.startswith("random") else 3)
        r = run_model(model, prompts, special, batch_size=args.batch_size, full_configs=full_configs)
        r["tokens"] = f"{min(lengths)}-{sum(lengths) / len(lengths):.0f}-{max(lengths)}"
        rows[name] = r
        print(f"-- {name}: L={model.cfg.n_layers} d={model.cfg.d_model} tokens/prompt {r['tokens']}")
        print(f"   prefix cache {r['t_cache']:.2f}s; per config: one-position {r['t_one']:.2f}s, "
              f"full prefill {r['t_full']:.2f}s ({r['full_configs']} of {r['configs']} timed)")
        print(f"   grid of {r['configs']}: full {r['full_grid']:.1f}s vs cached {r['cached_grid']:.1f}s "
              f"-> speed-up {r['grid_speedup']:.2f}x (per config {r['per_config_speedup']:.2f}x)")
        print(f"   max |logit diff| steered {r['max_diff_steered']:.2e}, unsteered {r['max_diff_unsteered']:.2e}")
        del model
    command = "python -m benchmarks.bench_cached_scoring" + (" --quick" if args.quick else "")
    text = markdown(rows, {"n": n, "batch_size": args.batch_size, "threads": args.threads}, command)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
