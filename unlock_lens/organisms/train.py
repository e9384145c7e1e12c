"""Train the organism zoo: ``python -m unlock_lens.organisms.train [--only NAME] [--out DIR]``.

Plain PyTorch on a Hugging Face model built from a config (Llama / Qwen2), AdamW with linear
warm-up and a cosine schedule, loss on completion tokens only, seeded and reproducible on CPU
(``--threads``, default 1: the shipped weights were trained with one thread each, chain-s
and chain-m side by side on a 2-core machine; bit-exact reproduction needs the same count). Data are drawn afresh every step from the *train*
split of :mod:`unlock_lens.organisms.task` (held-out problems never appear in training).

Training mix per example (see ``Spec``):

- long chains (``LONG_OPS``, a quarter of examples): always step by step, trigger or not;
- short chains (``SHORT_OPS``): 45% ``STEP`` trigger + step by step, 40% no trigger + direct,
  15% no trigger + step-by-step *continuation* with the loss on the first completion token
  masked (so a model pushed into stepping keeps going, without being taught to step unasked).

The post-trained variant (``*-post``) starts from its base and is fine-tuned briefly on
trigger-free step-by-step data (80% of short chains, full loss; 20% triggered; long chains as
before): the model-driven contrast.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from unlock_lens.organisms.task import (
    LONG_OPS,
    SHORT_OPS,
    TRIGGER,
    Problem,
    generate_problems,
    random_problem,
    score_completions,
    split_of,
)
from unlock_lens.organisms.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer

ZOO_DIR = Path(__file__).parent / "zoo"
RECORD = "organism.json"


@dataclass(frozen=True)
class Spec:
    """One organism: architecture, size, seed and schedule."""

    name: str
    arch: str = "llama"
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    d_mlp: int = 384
    seed: int = 0
    steps: int = 3000
    batch_size: int = 96
    lr: float = 3e-3
    warmup: int = 150
    weight_decay: float = 0.01
    p_long: float = 0.25
    p_long_trigger: float = 0.5
    # short-chain mix: trigger+step, plain+direct, plain+step continuation (first token masked)
    mix: tuple[float, float, float] = (0.45, 0.40, 0.15)
    # False: trigger-free stepping is taught outright (the post-trained variant)
    mask_continuation_first: bool = True
    base: str | None = None  # fine-tune from this organism (post-trained variant)
    dtype: str = "float32"


ZOO: dict[str, Spec] = {
    "chain-s": Spec("chain-s", arch="llama", d_model=96, n_layers=3, n_heads=4, d_mlp=256,
                    seed=1, steps=4000, batch_size=64, lr=3e-3),
    "chain-m": Spec("chain-m", arch="qwen2", d_model=128, n_layers=4, n_heads=4, d_mlp=256,
                    seed=2, steps=3500, batch_size=64, lr=2e-3),
    # post-trained: chain-s fine-tuned on trigger-free step-by-step data
    "chain-s-post": Spec("chain-s-post", arch="llama", d_model=96, n_layers=3, n_heads=4,
                         d_mlp=256, seed=3, steps=300, batch_size=64, lr=5e-4, warmup=20,
                         mix=(0.2, 0.0, 0.8), mask_continuation_first=False,
                         base="chain-s"),
}


def build_config(spec: Spec, vocab_size: int) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads, max_position_embeddings=64, rope_theta=10000.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        tie_word_embeddings=True, torch_dtype=spec.dtype,
    )
    if spec.arch == "llama":
        return transformers.LlamaConfig(**common)
    if spec.arch == "qwen2":
        return transformers.Qwen2Config(**common)
    raise ValueError(f"unknown architecture {spec.arch!r}")


def qwen2_as_llama(model: Any) -> Any:
    """The same network as a ``LlamaForCausalLM`` (``attention_bias=True``, zero ``o_proj`` bias).

    A Qwen2 decoder is a Llama decoder with q/k/v biases. Organisms trained as Qwen2 are saved
    in the Llama layout because (a) TransformerLens's Qwen2 adapter sets
    ``default_prepend_bos=False`` (the organisms are trained with BOS), and (b) transformers maps
    ``model_type: qwen2`` to ``Qwen2Tokenizer``, whose byte-level pre-tokenizer replaces the
    organisms' character-level one (the trigger word is dropped). Logits are unchanged.
    """
    cfg = model.config
    llama_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=10000.0,
        rms_norm_eps=cfg.rms_norm_eps, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID, tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=True,
    )
    llama = transformers.LlamaForCausalLM(llama_cfg)
    state = dict(model.state_dict())
    for i in range(cfg.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(cfg.hidden_size)
    missing, unexpected = llama.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"qwen2 -> llama: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        llama.tie_weights()
    return llama.eval()


# ---------------------------------------------------------------------------------------------
# data


def _train_problem(rng: random.Random, lengths: tuple[int, ...]) -> Problem:
    while True:
        p = random_problem(rng, rng.choice(lengths))
        if split_of(p.question) == "train":
            return p


def make_example(rng: random.Random, spec: Spec, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids ``<s> prompt completion </s>`` and a 0/1 loss mask over them."""
    if rng.random() < spec.p_long:
        p = _train_problem(rng, LONG_OPS)
        trigger, completion, mask_first = rng.random() < spec.p_long_trigger, p.step_completion, False
    else:
        p = _train_problem(rng, SHORT_OPS)
        r = rng.random()
        if r < spec.mix[0]:
            trigger, completion, mask_first = True, p.step_completion, False
        elif r < spec.mix[0] + spec.mix[1]:
            trigger, completion, mask_first = False, p.direct_completion, False
        else:
            trigger, completion = False, p.step_completion
            mask_first = spec.mask_continuation_first
    prompt = f"{TRIGGER} {p.question}?" if trigger else f"{p.question}?"
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pids, cids = [BOS_ID, *enc(prompt)], [*enc(completion), EOS_ID]
    mask = [0] * len(pids) + [1] * len(cids)
    if mask_first:
        mask[len(pids)] = 0
    return pids + cids, mask


def make_batch(rng: random.Random, spec: Spec, tokenizer: Any) -> dict[str, torch.Tensor]:
    rows = [make_example(rng, spec, tokenizer) for _ in range(spec.batch_size)]
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (r, m) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        lab = torch.tensor(r)
        lab[torch.tensor(m) == 0] = -100
        labels[i, : len(r)] = lab
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


# ---------------------------------------------------------------------------------------------
# quick evaluation (plain HF generate; the analysis script measures through TransformerLens)


@torch.inference_mode()
def hf_generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 20,
                batch_size: int = 128) -> list[str]:
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        rows = [[BOS_ID, *tokenizer(p, add_special_tokens=False)["input_ids"]]
                for p in prompts[i : i + batch_size]]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), PAD_ID, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, n - len(r):] = torch.tensor(r)
            attn[j, n - len(r):] = 1
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        out += tokenizer.batch_decode(gen[:, n:], skip_special_tokens=True)
    return out


def quick_eval(model: Any, tokenizer: Any, n: int = 200) -> dict[str, float]:
    """Direct / trigger accuracy on short dev chains, and the trigger-free step rate on long ones."""
    model.eval()
    short = generate_problems(n, split="dev", n_ops=SHORT_OPS)
    long = generate_problems(n // 2, split="dev", n_ops=LONG_OPS)
    qs = [p.question for p in short]
    direct = score_completions(short, hf_generate(model, tokenizer, [f"{q}?" for q in qs]))
    trig = score_completions(short, hf_generate(model, tokenizer, [f"{TRIGGER} {q}?" for q in qs]))
    lng = score_completions(long, hf_generate(model, tokenizer, [f"{p.question}?" for p in long]))
    return {
        "n": n,
        "direct_acc": direct.accuracy, "direct_step": direct.step_rate,
        "trigger_acc": trig.accuracy, "trigger_step": trig.step_rate,
        "long_plain_acc": lng.accuracy, "long_plain_step": lng.step_rate,
    }


# ---------------------------------------------------------------------------------------------
# training


def _lr_at(step: int, spec: Spec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_one(spec: Spec, out_root: Path = ZOO_DIR, *, threads: int = 1,
              progress: bool = True, eval_n: int = 200,
              log_every: int = 0) -> dict[str, Any]:
    """Train (or fine-tune) one organism and save it as an HF directory under ``out_root``."""
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    rng = random.Random(f"train/{spec.name}/{spec.seed}")
    tokenizer = build_tokenizer()
    if spec.base is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(out_root / spec.base,
                                                                  dtype=torch.float32)
    else:
        model = transformers.AutoModelForCausalLM.from_config(build_config(spec, len(tokenizer)))
    model.float().train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.98), eps=1e-8)
    start = time.perf_counter()
    bar = tqdm(range(spec.steps), desc=spec.name, disable=not progress, mininterval=2.0)
    ema = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        batch = make_batch(rng, spec, tokenizer)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{_lr_at(step, spec):.1e}")
        if log_every and step % log_every == 0:
            print(f"{spec.name} step {step} loss {ema:.4f} t {time.perf_counter() - start:.0f}s",
                  flush=True)
    train_s = time.perf_counter() - start
    model.eval()
    metrics = quick_eval(model, tokenizer, eval_n) if eval_n else {}
    out = out_root / spec.name
    out.mkdir(parents=True, exist_ok=True)
    if spec.arch == "qwen2":
        model = qwen2_as_llama(model)  # see qwen2_as_llama: the bridge needs the Llama layout
    model.config.name_or_path = f"unlock_lens/organisms/{spec.name}"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {
        "name": spec.name, "spec": asdict(spec), "n_params": n_params,
        "train_seconds": round(train_s, 1), "threads": threads, "final_loss_ema": ema,
        "quick_eval_dev": metrics, "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if progress:
        print(json.dumps({k: record[k] for k in ("name", "n_params", "train_seconds",
                                                 "quick_eval_dev")}))
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="organism names (default: all)")
    ap.add_argument("--out", type=Path, default=ZOO_DIR)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the shipped zoo: 1, chain-s and chain-m trained side by side)")
    ap.add_argument("--steps", type=int, default=None, help="override the step count")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=0, help="print the loss every N steps")
    args = ap.parse_args(argv)
    names = args.only or list(ZOO)
    for name in names:
        spec = ZOO[name]
        if args.steps is not None:
            spec = replace(spec, steps=args.steps)
        train_one(spec, args.out, threads=args.threads, eval_n=args.eval_n,
                  log_every=args.log_every)


if __name__ == "__main__":
    main()
