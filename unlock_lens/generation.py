"""Batched greedy generation with optional steering (left padding, KV cache, stop strings)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unlock_lens.activations import encode, model_device, plan_batches
from unlock_lens.errors import UnlockLensError


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    n_tokens: int


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = len(text)
    for s in stop_strings:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def generate(
    model: Any,
    prompts: Sequence[str],
    *,
    steering: Any = None,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = (),
    batch_size: int = 16,
    progress: bool | str = False,
) -> list[Generation]:
    """Greedy completions for ``prompts`` (in order); steered inside ``steering.applied``.

    Completions are cut at the first stop string; ``n_tokens`` counts generated tokens up to
    the model's stop (EOS or a stop string) or ``max_new_tokens``. Steering hooks are
    attached per batch and removed on return and on any exception (``KeyboardInterrupt``
    included). Greedy decoding: the same inputs give the same texts on CPU.
    """
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise UnlockLensError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    device = model_device(model)
    tok = model.tokenizer
    eos = tok.eos_token_id
    results: dict[int, Generation] = {}
    batches = plan_batches(model, prompts, batch_size)
    desc = progress if isinstance(progress, str) else "generate"
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = encode(model, [prompts[i] for i in idx])
        ctx = steering.applied(model) if steering is not None else nullcontext()
        with torch.inference_mode(), ctx:
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_at_eos=eos is not None,
                stop_strings=list(stop_strings) or None,
                use_past_kv_cache=True,
                return_type="tokens",
                verbose=False,
            )
        new = out[:, ids.shape[1] :].cpu()
        for k, i in enumerate(idx):
            row = new[k].tolist()
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = tok.decode(row, skip_special_tokens=True)
            cut = _cut_at_stop(text, stop_strings)
            n = len(row) if cut == text else len(tok(cut, add_special_tokens=False)["input_ids"])
            results[i] = Generation(prompts[i], cut, n)
    return [results[i] for i in range(len(prompts))]
