"""Batched greedy generation with optional steering (left padding, KV cache, stop strings).

Small base models often fall into a loop (the same line or block repeated until the token
limit). ``stop_loops=True`` ends such a row once its output is periodic over the last
``LoopStop.min_span`` tokens: the answer a loop repeats cannot change, and a batch no longer
runs to ``max_new_tokens`` for one looping row.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from unlock_lens.activations import encode, model_device, plan_batches
from unlock_lens.compat import bridge_kv_cache_keyword
from unlock_lens.distributions import entropy
from unlock_lens.errors import UnlockLensError
from unlock_lens.prompts import SpecialTokens


@dataclass(frozen=True)
class Generation:
    """One completion; ``first_token_entropy``: entropy (nats) of the first next-token
    distribution, as generated (steered when steering was on); ``tokens``: the generated ids
    kept (before EOS, and before the first stop string: the longest prefix whose text fits in
    ``text``), the exact tokens to teacher-force when scoring this completion."""

    prompt: str
    text: str
    n_tokens: int
    first_token_entropy: float = float("nan")
    tokens: tuple[int, ...] = ()


class _FirstStepEntropy(StoppingCriteria):
    """Bridge engine: records the entropy of the first step's logits; never stops a row."""

    def __init__(self) -> None:
        self.values: list[float] | None = None

    def __call__(self, input_ids: Int[Tensor, "batch pos"], scores: Float[Tensor, "batch vocab"],
                 **kwargs: Any) -> Any:
        if self.values is None:
            self.values = entropy(scores).tolist()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _FirstStepEntropyProcessor(LogitsProcessor):
    """HF engine: the same record, as a logits processor (HF passes stopping criteria no scores)."""

    def __init__(self) -> None:
        self.values: list[float] | None = None

    def __call__(self, input_ids: Int[Tensor, "batch pos"], scores: Float[Tensor, "batch vocab"]) -> Tensor:
        if self.values is None:
            self.values = entropy(scores).tolist()
        return scores


class LoopStop(StoppingCriteria):
    """Finished rows: the generated tail repeats one block of ``p <= max_period`` tokens.

    A row stops when its last ``max(2 p, ceil(min_span / p) p)`` generated tokens are
    periodic with period ``p`` (at least two copies, spanning at least ``min_span`` tokens),
    e.g. 48 equal tokens, six copies of an 8-token phrase or two copies of a 40-token block.
    """

    def __init__(self, prompt_length: int, *, max_period: int = 64, min_span: int = 48) -> None:
        if max_period < 1 or min_span < 2:
            raise UnlockLensError(f"need max_period >= 1 and min_span >= 2, got {max_period}, {min_span}")
        self.prompt_length = prompt_length
        self.max_period = max_period
        self.min_span = min_span

    def __call__(self, input_ids: Int[Tensor, "batch pos"], scores: Float[Tensor, "batch vocab"] | None = None,
                 **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for p in range(1, self.max_period + 1):
            span = p * max(2, -(-self.min_span // p))
            if span > generated.shape[1]:
                continue
            tail = generated[:, -span:]
            done |= (tail[:, p:] == tail[:, :-p]).all(-1)
        return done


Engine = Literal["auto", "bridge", "hf"]
ENGINES: tuple[str, ...] = ("auto", "bridge", "hf")


def _bridge_tokens(model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int,
                   stop_strings: Sequence[str], stop_loops: bool) -> tuple[Tensor, list[float] | None]:
    first = _FirstStepEntropy()
    criteria: list[Any] = [first, LoopStop(ids.shape[1])] if stop_loops else [first]
    eos = model.tokenizer.eos_token_id
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        stop_at_eos=eos is not None, stop_strings=list(stop_strings) or None,
        stopping_criteria=criteria, use_past_kv_cache=True, return_type="tokens", verbose=False,
    )
    return out, first.values


def _hf_tokens(model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int,
               stop_strings: Sequence[str], stop_loops: bool) -> tuple[Tensor, list[float] | None]:
    """HF's own ``generate`` on the bridge's model (the bridge's hook points still fire).

    HF computes the prefill logits at the last position only; the bridge's loop computes them
    at every prompt position, which costs prompt_len x vocab x d_model per row (large for
    Gemma's 262k vocabulary). Rows that finish are padded with EOS, as in the bridge loop.
    """
    tok, hf = model.tokenizer, model.original_model
    eos = tok.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos, pad_token_id=eos if eos is not None else tok.pad_token_id,
                              stop_strings=list(stop_strings) or None)
    first = _FirstStepEntropyProcessor()
    out = hf.generate(
        input_ids=ids, attention_mask=mask, generation_config=config,
        logits_processor=LogitsProcessorList([first]),
        stopping_criteria=[LoopStop(ids.shape[1])] if stop_loops else None,
        tokenizer=tok if stop_strings else None,
    )
    return out, first.values


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
    stop_loops: bool = False,
    engine: Engine = "auto",
    progress: bool | str = False,
    special_tokens: SpecialTokens = "model",
) -> list[Generation]:
    """Greedy completions for ``prompts`` (in order); steered inside ``steering.applied``.

    Completions are cut at the first stop string; ``n_tokens`` counts generated tokens up to
    the model's stop (EOS or a stop string) or ``max_new_tokens``. Steering hooks are
    attached per batch and removed on return and on any exception (``KeyboardInterrupt``
    included). ``stop_loops``: end rows caught in a loop (:class:`LoopStop`).
    ``engine``: ``"bridge"`` (TransformerBridge's generate loop), ``"hf"`` (Hugging Face's
    ``generate`` on the same modules and hooks: the same greedy tokens, and 1.55x the
    throughput on Gemma-3-270M, whose prefill logits over a 262k vocabulary the bridge loop
    computes at every prompt position; ``benchmarks/README.md``) or ``"auto"`` (``hf`` for a
    bridge over a Hugging Face model, else ``bridge``). Greedy decoding: the same inputs give
    the same texts on CPU. ``special_tokens``: how prompts are tokenised
    (:func:`unlock_lens.activations.encode`; a Variant's ``special_tokens``).
    """
    if engine not in ENGINES:
        raise UnlockLensError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    over_hf = getattr(model, "original_model", None) is not None
    if engine == "hf" and not over_hf:
        raise UnlockLensError("engine='hf' needs a TransformerBridge over a Hugging Face model; "
                              "use engine='bridge'")
    run = _hf_tokens if engine == "hf" or (engine == "auto" and over_hf) else _bridge_tokens
    if len(prompts) == 0:
        raise UnlockLensError("the prompt list is empty: pass at least one prompt")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise UnlockLensError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    bridge_kv_cache_keyword(model)  # a no-op after load_model; here for bridges booted elsewhere
    device = model_device(model)
    tok = model.tokenizer
    results: dict[int, Generation] = {}
    batches = plan_batches(model, prompts, batch_size)
    desc = progress if isinstance(progress, str) else "generate"
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = encode(model, [prompts[i] for i in idx], special_tokens=special_tokens)
        ctx = steering.applied(model) if steering is not None else nullcontext()
        with torch.inference_mode(), ctx:
            out, entropies = run(model, ids.to(device), mask.to(device), max_new_tokens,
                                 stop_strings, stop_loops)
        new = out[:, ids.shape[1] :].cpu()
        for k, i in enumerate(idx):
            entropy = entropies[k] if entropies is not None else float("nan")
            results[i] = finish(tok, prompts[i], new[k].tolist(), stop_strings, entropy)
    return [results[i] for i in range(len(prompts))]


def finish(tokenizer: Any, prompt: str, tokens: list[int], stop_strings: Sequence[str],
           first_token_entropy: float = float("nan")) -> Generation:
    """A Generation from generated token ids: cut at EOS, decoded, cut at the first stop string.

    ``n_tokens`` counts the tokens kept (re-tokenised when a stop string cut the text).
    Shared by every engine, so their rows are comparable.
    """
    eos = tokenizer.eos_token_id
    if eos is not None and eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cut = _cut_at_stop(text, stop_strings)
    n = len(tokens) if cut == text else len(tokenizer(cut, add_special_tokens=False)["input_ids"])
    kept = tokens if cut == text else _tokens_within(tokenizer, tokens, len(cut))
    return Generation(prompt, cut, n, first_token_entropy, tuple(kept))


def _tokens_within(tokenizer: Any, tokens: list[int], n_chars: int) -> list[int]:
    """The longest prefix of ``tokens`` whose decoded text is at most ``n_chars`` long."""
    k = len(tokens)
    while k and len(tokenizer.decode(tokens[:k], skip_special_tokens=True)) > n_chars:
        k -= 1
    return tokens[:k]
