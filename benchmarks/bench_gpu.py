"""The torch path on a GPU, in one run: capture, steered vs unsteered generation, alignment fits,
the read-out's exactness, and the 540-configuration sweep at the matmul floor.

Real weights cannot travel to the lent GPU machine (its working tree is capped at 64 MiB), so the
models are **the real models' architectures and tokenizers with random weights**: each folder
under ``--configs`` holds a real model's ``config.json`` and tokenizer files, and the weights
are drawn by Hugging Face's initialiser (seed 0). Speed depends on the shapes, not on the
weights; greedy outputs of random weights are not text, so generation is timed per token
generated.

    python -m benchmarks.bench_gpu --configs .gpu --device cuda --out $OUT   # on the GPU machine
    python -m benchmarks.bench_gpu --configs .gpu --device cpu --small       # a smoke test here

Make ``.gpu`` here with ``python -m benchmarks.bench_gpu --export-configs .gpu`` (copies the
config and tokenizer files of the cached real models; no weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks._common import make_prompts
from benchmarks.bench_sweep import mm_rate, sync

NAMES = ("smollm2-135m-instruct", "gemma-3-270m")
KEEP = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", "special_tokens_map.json")


def timed(fn, device: str, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def export_configs(dest: Path) -> None:
    from unlock_lens.models import cache_root

    for name in NAMES:
        src = Path(cache_root()) / "models" / name
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in KEEP:
            if (src / f).exists():
                shutil.copy(src / f, dest / name / f)
    print(f"configs and tokenizers of {NAMES} -> {dest}")


def random_weights(configs: Path, work: Path) -> dict[str, Path]:
    """A model folder per name: the real config and tokenizer, weights drawn with seed 0."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for name in NAMES:
        dest = work / name
        if not (dest / "model.safetensors").exists():
            torch.manual_seed(0)
            config = AutoConfig.from_pretrained(configs / name)
            AutoModelForCausalLM.from_config(config).save_pretrained(dest)
            for f in KEEP:
                if (configs / name / f).exists() and f != "config.json":
                    shutil.copy(configs / name / f, dest / f)
        out[name] = dest
    return out


def bench_capture(model, device: str, n: int) -> dict:
    from unlock_lens.activations import capture

    prompts = make_prompts(n, 60)
    hf = model.original_model
    tok = model.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)

    def bare():
        with torch.inference_mode():
            return hf(**enc, output_hidden_states=True, logits_to_keep=1)

    t_bare, _ = timed(bare, device)
    t_cap, h = timed(lambda: capture(model, prompts, batch_size=n, device=device), device)
    return {"prompts": n, "capture_s": t_cap, "hf_forward_s": t_bare, "ratio": t_cap / t_bare,
            "shape": list(h.shape)}


def bench_generation(model, device: str, n: int, tokens: int) -> dict:
    from unlock_lens.generation import generate
    from unlock_lens.steer import Steering

    prompts = make_prompts(n, 40)
    g = torch.Generator().manual_seed(0)
    d, layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    steering = Steering({layer: torch.randn(d, generator=g) for layer in range(layers)}, alpha=0.1)
    out = {}
    for label, s in (("unsteered", None), ("steered", steering)):
        seconds, gens = timed(lambda s=s: generate(model, prompts, steering=s, max_new_tokens=tokens,
                                                   batch_size=n), device, repeats=2)
        produced = sum(x.n_tokens for x in gens)
        out[label] = {"s": seconds, "tokens": produced, "tokens_per_s": produced / seconds}
    out["steered_over_unsteered_time"] = out["steered"]["s"] / out["unsteered"]["s"]
    out.update(prompts=n, max_new_tokens=tokens)
    return out


def bench_fits(device: str, n: int) -> dict:
    from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps

    g = torch.Generator(device="cpu").manual_seed(0)
    h_src = torch.randn(n, 4, 576, generator=g).to(device)
    h_tgt = (h_src[..., :576] @ torch.randn(576, 640, generator=g).to(device)) + 0.1 * torch.randn(
        n, 4, 640, generator=g).to(device)
    pairing = LayerPairing.by_depth(4, 4)
    out = {"n": n}
    for method, rank in (("svd", 64), ("procrustes", 64), ("cca", 64), ("ridge", 64)):
        seconds, maps = timed(lambda m=method, r=rank: fit_layer_maps(h_src, h_tgt, pairing, AlignSpec(m, rank=r)),
                              device, repeats=3)
        out[method] = {"s": seconds, "weight_device": str(next(iter(maps.values())).weight.device)}
    return out


def readout_exactness(models: dict, device: str, n: int) -> dict:
    """KL and log p of a few configurations: the chunked read-out on the prefix cache vs one
    full steered prefill each (``AblationSetup.cached = False``), on the GPU."""
    from dataclasses import replace

    from unlock_lens.align.layers import AlignSpec
    from unlock_lens.diagnostics.ablations import prepare_ablation
    from unlock_lens.unlock import Unlock

    pipe = Unlock(source=models["source"], target=models["target"], method="svd")
    qs = make_prompts(3 * n, 30, seed=1)
    key = pipe.extract(qs[:n])
    setup = prepare_ablation(key, pipe.locked, pipe.target_variant, qs[n : 2 * n], qs[2 * n :],
                             spec=AlignSpec("svd", rank=4, centered=False))
    dirs = setup.directions()
    layers = setup.target_layers
    grid = [setup.steering(dirs, layers[i : i + 3], a) for i in (0, len(layers) // 2) for a in (0.1, 1.0)]
    cached = list(setup.scores_of(grid))
    full = list(replace(setup, cached=False).scores_of(grid))
    kl_diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(cached, full, strict=True))
    logp_diff = max(float((a[1] - b[1]).abs().max()) for a, b in zip(cached, full, strict=True))
    return {"configs": len(grid), "prompts": n, "linear_readout": setup.prefix().memo.get("linear_readout") is not None,
            "max_abs_diff_kl": kl_diff, "max_abs_diff_logp": logp_diff,
            "kl_range": [min(float(k.mean()) for k, _ in full), max(float(k.mean()) for k, _ in full)]}


def bench_sweep_grid(paths: dict, device: str, small: bool) -> dict:
    from benchmarks import bench_sweep

    args = SimpleNamespace(
        source=str(paths["smollm2-135m-instruct"]), target=str(paths["gemma-3-270m"]), device=device,
        quick=True,  # synthetic prompts: the GSM8K files do not travel
        n_prompts=16 if small else 64, n_key=8 if small else 64, n_align=16 if small else 64,
        bands=3 if small else 18, ranks=(1, 4) if small else bench_sweep.RANKS,
        alphas=(0.1, 1.0) if small else bench_sweep.ALPHAS, batch_size=16, configs=0, sample_every=5.0)
    r = bench_sweep.run(args)
    r["report"] = bench_sweep.report(r, "python -m benchmarks.bench_gpu (the sweep part)")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=Path, default=Path(".gpu"))
    p.add_argument("--export-configs", type=Path, default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_gpu"))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu_models"))
    p.add_argument("--small", action="store_true", help="small sizes (a smoke test on CPU)")
    args = p.parse_args()
    if args.export_configs:
        export_configs(args.export_configs)
        return
    missing = [name for name in NAMES if not (args.configs / name / "config.json").is_file()]
    if missing:
        p.error(f"--configs {args.configs}: no config.json for {', '.join(missing)}; make the folder with "
                f"--export-configs {args.configs}")
    args.out.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    import transformers

    results: dict = {"device": args.device, "torch": torch.__version__, "transformers": transformers.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                     "weights": "random (seed 0), real configs and tokenizers", "float32_matmul_tf32":
                     torch.backends.cuda.matmul.allow_tf32}
    t0 = time.perf_counter()

    def section(name: str, fn) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {name}", flush=True)
        try:
            results[name] = fn()
        except Exception:  # one failing part must not lose the others' numbers
            results[name] = {"error": traceback.format_exc(limit=4)}
            print(results[name]["error"], file=sys.stderr, flush=True)
        (args.out / "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))

    from unlock_lens.models import load_model

    paths = random_weights(args.configs, args.work)
    models = {"source": load_model(str(paths[NAMES[0]]), device=args.device),
              "target": load_model(str(paths[NAMES[1]]), device=args.device)}
    small = args.small
    section("matmul_fp32_gflops", lambda: mm_rate(args.device, 1024 if small else 4096, repeats=5))
    section("capture_gemma", lambda: bench_capture(models["target"], args.device, 8 if small else 256))
    section("generation_gemma", lambda: bench_generation(models["target"], args.device, 4 if small else 64,
                                                         4 if small else 64))
    section("generation_smollm2", lambda: bench_generation(models["source"], args.device, 4 if small else 64,
                                                           4 if small else 64))
    section("fits", lambda: bench_fits(args.device, 256 if small else 8192))
    section("readout_exactness", lambda: readout_exactness(models, args.device, 4 if small else 16))
    section("sweep", lambda: bench_sweep_grid(paths, args.device, small))
    print(f"[{time.perf_counter() - t0:6.0f} s] done -> {args.out / 'bench_gpu.json'}", flush=True)
    if isinstance(results.get("sweep"), dict) and "report" in results["sweep"]:
        print(results["sweep"]["report"])


if __name__ == "__main__":
    main()
