"""Where one scoring forward's time goes on Gemma-3-270M: torch.profiler's op table for the
logits-held path (``forward_configurations``, 64 prompts x 8 configurations = 512 rows, as
before the read-out) and for the read-out (``readout_configurations``, 16 prompts x 64
configurations = 1024 rows), the figures quoted in ``benchmarks/README.md`` ("sweep at the
matmul floor"). Needs the real model in the cache (``scripts/install_offline_models.sh``).

    python -m benchmarks.profile_readout --threads 2
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=25, help="op-table rows to print")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header("profile_readout")
    from benchmarks.bench_sweep import questions
    from unlock_lens.activations import Variant, final_logits
    from unlock_lens.diagnostics.cached_scoring import forward_configurations, prefix_cache
    from unlock_lens.diagnostics.readout import readout_configurations
    from unlock_lens.models import load_model
    from unlock_lens.prompts import get_format
    from unlock_lens.steer import Steering

    model = load_model("gemma-3-270m")
    _, _, qs = questions(4, 4, 64)
    prompts = Variant(model, get_format("general-direct")).prompts(qs)
    ref = final_logits(model, Variant(model, get_format("cot")).prompts(qs), batch_size=64)
    g = torch.Generator().manual_seed(0)
    d = int(model.cfg.d_model)
    grid = [Steering({layer: torch.randn(d, generator=g) for layer in (3, 4, 5)}, alpha=0.5) for _ in range(64)]

    held = prefix_cache(model, prompts, batch_size=64).batches[0]
    forward_configurations(model, held, held.last_ids, grid[:8])  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        forward_configurations(model, held, held.last_ids, grid[:8])
    print("\nlogits held: 64 prompts x 8 configurations = 512 rows, one forward")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))

    cache = prefix_cache(model, prompts[:16], batch_size=16)
    ref_p, tokens = torch.softmax(ref[:16], -1), ref[:16].topk(5, -1).indices
    list(readout_configurations(model, cache, grid, ref_p, tokens, with_entropy=False))  # warm-up + check
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        list(readout_configurations(model, cache, grid, ref_p, tokens, with_entropy=False))
    print("\nread-out: 16 prompts x 64 configurations = 1024 rows, one forward, KL and log p included")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
