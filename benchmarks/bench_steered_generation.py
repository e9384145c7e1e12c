"""Steered vs unsteered greedy generation, and against the ``steering-vectors`` peer.

Same model, prompts, batch size and ``max_new_tokens`` for every variant, timed round-robin:

- ``ours_unsteered``: ``unlock_lens.generation.generate`` (TransformerBridge, KV cache);
- ``ours_rotate_last``: the paper's edit (``rotate`` at the last prompt token, prefill only);
- ``ours_raw_all``: ``normalisation="raw"``, ``positions="all"`` (h + alpha r at every token);
- ``ours_hf_rotate_last`` / ``ours_hf_raw_all``: the same, ``generate(..., engine="hf")``
  (HF's generate loop over the bridge's modules and hooks: same tokens, prefill logits at the
  last position only);
- ``peer_steering_vectors``: ``steering_vectors.SteeringVector(...).apply(hf_model,
  multiplier=alpha)`` on ``bridge.original_model`` + HF ``generate`` (greedy, same batches):
  the same additive edit at the same decoder-block outputs, all tokens;
- ``hf_unsteered``: HF ``generate`` on the same module, no hooks (reference).

Throughput is counted in decode-step slots (batch rows x steps actually run), so a variant
that stops earlier on EOS is not credited for work it skipped.

    python -m benchmarks.bench_steered_generation [--quick] [--profile]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import (
    REAL_MODELS,
    header,
    interleaved,
    load,
    make_prompts,
    med,
    ratio_line,
    spread,
)


def _directions(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(model.cfg.n_layers), int(model.cfg.d_model), generator=g)


def variants(model, prompts: list[str], *, max_new_tokens: int, batch_size: int, alpha: float):
    """Callables returning the number of decode-step slots they ran."""
    from unlock_lens.activations import _token_lengths, encode, length_sorted_batches
    from unlock_lens.generation import generate
    from unlock_lens.steer import Steering

    dirs = _directions(model)
    rotate = Steering(dirs, alpha=alpha, normalisation="rotate", positions="last_prompt")
    raw_all = Steering(dirs, alpha=alpha, normalisation="raw", positions="all")
    hf = model.original_model
    batches = [
        encode(model, [prompts[i] for i in idx])
        for idx in length_sorted_batches(_token_lengths(model, prompts), batch_size)
    ]
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos

    def ours(steering, engine="bridge"):
        def run() -> int:
            gens = generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, engine=engine)
            return _slots([g.n_tokens for g in gens], prompts, model, batch_size)
        return run

    def hf_generate(peer: bool):
        def run() -> int:
            ctx = _peer_context(hf, dirs, alpha) if peer else torch.inference_mode()
            slots = 0
            with torch.inference_mode(), ctx:
                for ids, mask in batches:
                    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=max_new_tokens, eos_token_id=eos,
                                      pad_token_id=pad)
                    slots += ids.shape[0] * (out.shape[1] - ids.shape[1])
            return slots
        return run

    fns = {
        "ours_unsteered": ours(None),
        "ours_rotate_last": ours(rotate),
        "ours_raw_all": ours(raw_all),
        "ours_hf_rotate_last": ours(rotate, "hf"),
        "ours_hf_raw_all": ours(raw_all, "hf"),
        "hf_unsteered": hf_generate(False),
    }
    if _peer_available():
        fns["peer_steering_vectors"] = hf_generate(True)
    return fns


def _slots(n_tokens: list[int], prompts: list[str], model, batch_size: int) -> int:
    """Decode-step slots of ``generate``'s batches (rows x longest completion of the batch)."""
    from unlock_lens.activations import _token_lengths, length_sorted_batches

    total = 0
    for idx in length_sorted_batches(_token_lengths(model, prompts), batch_size):
        total += len(idx) * max(max(n_tokens[i] for i in idx), 1)
    return total


def _peer_available() -> bool:
    try:
        import steering_vectors  # noqa: F401
    except ImportError:
        print("[skip] steering-vectors is not installed: pip install --no-deps steering-vectors")
        return False
    return True


def _peer_context(hf_model, dirs: torch.Tensor, alpha: float):
    from steering_vectors import SteeringVector

    vec = SteeringVector(layer_activations={i: d for i, d in enumerate(dirs)},
                         layer_type="decoder_block")
    return vec.apply(hf_model, multiplier=alpha)


def check_same_edit(model, prompt: str, alpha: float) -> float:
    """Max |logit| difference between ours (raw, all) and the peer on one prompt (0 = same)."""
    from unlock_lens.activations import encode
    from unlock_lens.steer import Steering

    dirs = _directions(model)
    ids, mask = encode(model, [prompt])
    with torch.inference_mode():
        with Steering(dirs, alpha=alpha, normalisation="raw", positions="all").applied(model):
            a = model(ids, attention_mask=mask)[:, -1]
        with _peer_context(model.original_model, dirs, alpha):
            b = model.original_model(input_ids=ids, attention_mask=mask).logits[:, -1]
    return float((a - b).abs().max())


def profile_generation(model, prompts, max_new_tokens: int, batch_size: int, alpha: float) -> None:
    """torch.profiler table of one steered and one unsteered ``generate`` (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from unlock_lens.generation import generate
    from unlock_lens.steer import Steering

    steering = Steering(_directions(model), alpha=alpha)
    for label, s in (("unsteered", None), ("rotate_last", steering)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, prompts, steering=s, max_new_tokens=max_new_tokens,
                     batch_size=batch_size)
        print(f"-- profile ({label}), top ops by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (< 2 min)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--words", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    args = p.parse_args()
    n = args.n or (8 if args.quick else 16)
    new = args.max_new_tokens or (8 if args.quick else 24)
    models = args.models or (["random"] if args.quick else ["random", *REAL_MODELS])
    header("bench_steered_generation")
    print(f"   prompts={n} words~{args.words} max_new_tokens={new} batch_size={args.batch_size} "
          f"alpha={args.alpha} repeats={args.repeats}")
    for name in models:
        model = load(name)
        if model is None:
            continue
        prompts = make_prompts(n, args.words)
        fns = variants(model, prompts, max_new_tokens=new, batch_size=args.batch_size,
                       alpha=args.alpha)
        slots = {k: fn() for k, fn in fns.items()}
        t = interleaved(fns, args.repeats, warmup=0)
        print(f"-- {name}: L={model.cfg.n_layers} d={model.cfg.d_model}")
        if "peer_steering_vectors" in fns:
            diff = check_same_edit(model, prompts[0], args.alpha)
            print(f"   same edit check: max |logit(ours raw/all) - logit(peer)| = {diff:.2e}")
        rate = {k: slots[k] / med(t[k]) for k in fns}
        for k in fns:
            print(f"   {k:<22} {spread(t[k])}  slots={slots[k]:5d}  {rate[k]:7.1f} slot/s")
        print(ratio_line("steered (rotate, last prompt) / unsteered, same engine",
                         rate["ours_rotate_last"], rate["ours_unsteered"], "(target >= 0.95)"))
        print(ratio_line("steered (raw, all tokens) / unsteered, same engine",
                         rate["ours_raw_all"], rate["ours_unsteered"], "(target >= 0.95)"))
        if "peer_steering_vectors" in rate:
            print(ratio_line("ours raw/all / steering-vectors peer (HF generate)",
                             rate["ours_raw_all"], rate["peer_steering_vectors"],
                             "(target >= 1.0)"))
            print(ratio_line("ours raw/all, hf engine / steering-vectors peer",
                             rate["ours_hf_raw_all"], rate["peer_steering_vectors"],
                             "(target >= 1.0)"))
            print(ratio_line("peer steered / HF unsteered", rate["peer_steering_vectors"],
                             rate["hf_unsteered"]))
        print(ratio_line("engine: bridge generate / HF generate, both unsteered",
                         rate["ours_unsteered"], rate["hf_unsteered"]))
        print(ratio_line("steered (rotate, last prompt): hf engine / bridge engine",
                         rate["ours_hf_rotate_last"], rate["ours_rotate_last"]))
        print(ratio_line("steered (rotate, last prompt), hf engine / HF unsteered",
                         rate["ours_hf_rotate_last"], rate["hf_unsteered"], "(target >= 0.95)"))
        if args.profile:
            profile_generation(model, prompts, new, args.batch_size, args.alpha)


if __name__ == "__main__":
    main()
