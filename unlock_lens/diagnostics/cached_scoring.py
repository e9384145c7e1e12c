"""First-token scoring of many steering configurations on one shared prompt-prefix KV cache.

With ``positions="last_prompt"`` the steering edit touches only the last prompt position, so
every configuration sees the same unsteered keys and values for the tokens before it.
:func:`prefix_cache` runs those tokens once per batch (left-padded, masks and positions as in
:func:`~unlock_lens.activations.final_logits`) and keeps Hugging Face's KV cache;
:func:`score_last_position` then runs only the last prompt token on a copy of that cache, with
the steering applied, and returns the next-token logits: what a full steered prefill gives
(``tests/test_cached_scoring.py`` checks 1e-4) for a one-position forward per configuration.

>>> cache = prefix_cache(model, prompts)  # doctest: +SKIP
>>> grid = {a: score_last_position(model, cache, steering.scaled(a)) for a in (0.05, 0.1, 0.5)}  # doctest: +SKIP

Only position rules that edit the last prompt position alone in a prefill are exact here
(``last_prompt``, and ``final``, which adds only generated tokens); others are refused. The
cache holds every prompt's keys and values at once (Gemma-3-270M: ~3.5 MiB per 100-token prompt
in float32), so split very large prompt sets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from unlock_lens.activations import encode, forward_kwargs, model_device, plan_batches
from unlock_lens.compat import bridge_kv_cache_keyword
from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import selects
from unlock_lens.prompts import SpecialTokens
from unlock_lens.steer import attached_hooks


@dataclass(frozen=True)
class PrefixBatch:
    """One batch: its prompt indices, the last token of each row, the full left-padded mask,
    the last token's position ids, and the KV cache of every position but the last (``None``
    when the prompts are one token long). The cache is never changed: scoring copies it."""

    indices: list[int]
    last_ids: Int[Tensor, "b 1"]
    mask: Int[Tensor, "b pos"] = field(repr=False)
    last_kwargs: dict[str, Any] = field(repr=False)
    kv: Any = field(repr=False)


@dataclass(frozen=True)
class PrefixCache:
    """The unsteered prefixes of ``n_prompts`` prompts, batched; build it with :func:`prefix_cache`."""

    model: Any = field(repr=False)
    batches: tuple[PrefixBatch, ...] = field(repr=False)
    n_prompts: int = 0


def edits_last_prompt_only(rule: str, n: int = 4) -> bool:
    """True when the position rule edits only the last position of an ``n``-token prefill."""
    pos = torch.arange(n)
    return bool(torch.equal(selects(rule, pos, n - 1), pos == n - 1))


def check_cacheable(steering: Any) -> None:
    """Refuse a steering whose edit would also change the cached prefix (or has no rule)."""
    rule = getattr(steering, "positions", None)
    if rule is None or not edits_last_prompt_only(rule):
        raise UnlockLensError(
            f"steering with positions={rule!r} edits prompt positions before the last one, which "
            "the shared prefix cache holds unsteered: use positions='last_prompt', or score with "
            "full steered prefills (unlock_lens.activations.final_logits)"
        )


def _check_bridge(model: Any) -> None:
    if getattr(model, "original_model", None) is None:
        raise UnlockLensError(
            "cached scoring needs a TransformerBridge over a Hugging Face model (its KV cache); "
            "for other models use full prefills (unlock_lens.activations.final_logits)"
        )


def _split_kwargs(model: Any, mask: Int[Tensor, "b pos"]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``final_logits``'s forward keywords for the full mask, split into the prefix call's
    (all positions but the last) and the last token's (full mask, its position only)."""
    full = forward_kwargs(model, mask)
    prefix = {**full, "attention_mask": mask[:, :-1]}
    last = dict(full)
    if "position_ids" in full:
        prefix["position_ids"] = full["position_ids"][:, :-1]
        last["position_ids"] = full["position_ids"][:, -1:]
    return prefix, last


def _prefix_batch(model: Any, prompts: Sequence[str], indices: list[int],
                  special_tokens: SpecialTokens) -> PrefixBatch:
    ids, mask = encode(model, prompts, special_tokens=special_tokens)
    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)
    prefix, last = _split_kwargs(model, mask)
    kv = None
    if ids.shape[1] > 1:
        with torch.inference_mode():
            _, kv = model(ids[:, :-1], return_type="logits_and_cache", use_cache=True, **prefix)
        if kv is None:
            raise UnlockLensError("the model returned no KV cache: use full prefills (final_logits)")
    return PrefixBatch(indices, ids[:, -1:], mask, last, kv)


def prefix_cache(
    model: Any,
    prompts: Sequence[str],
    *,
    special_tokens: SpecialTokens = "model",
    batch_size: int = 16,
) -> PrefixCache:
    """The unsteered KV cache of each prompt minus its last token, in ``final_logits``'s
    length-sorted, left-padded batches (one forward per batch; build it with no hooks on)."""
    _check_bridge(model)
    if attached_hooks(model):
        raise UnlockLensError(
            f"hooks are attached to the model ({sorted(attached_hooks(model))}): build the prefix "
            "cache outside any steering context, the prefix must be unsteered"
        )
    bridge_kv_cache_keyword(model)  # transformers >= 5.24 hands attention the cache as cache=
    batches = tuple(_prefix_batch(model, [prompts[i] for i in idx], idx, special_tokens)
                    for idx in plan_batches(model, prompts, batch_size))
    return PrefixCache(model, batches, len(prompts))


def _fresh_kv(kv: Any) -> Any:
    """A private copy of a batch's cache: the forward appends the last token to what it gets.

    Hugging Face's dynamic layers grow by ``torch.cat`` into new tensors, so a copy of the
    layer objects sharing the cached tensors suffices (no KV copied); any other cache is
    deep-copied.
    """
    if type(kv) is not DynamicCache or not all(_grows_by_concatenation(layer) for layer in kv.layers):
        return copy.deepcopy(kv)
    fresh = copy.copy(kv)
    fresh.layers = [copy.copy(layer) for layer in kv.layers]
    return fresh


def _grows_by_concatenation(layer: Any) -> bool:
    """Layer types whose ``update`` rebinds new tensors and never writes into the cached ones."""
    return type(layer) in (DynamicLayer, DynamicSlidingWindowLayer)


def _score_batch(model: Any, batch: PrefixBatch, steering: Any) -> Float[Tensor, "b vocab"]:
    kwargs = dict(batch.last_kwargs)
    if batch.kv is not None:
        kwargs["past_key_values"] = _fresh_kv(batch.kv)
    # a fresh applied() per batch: no prefill seen yet, so the one-position call counts as the
    # prefill's last position (a decode step would not be edited under last_prompt)
    ctx = steering.applied(model) if steering is not None else nullcontext()
    with torch.inference_mode(), ctx:
        out = model(batch.last_ids, **kwargs)
    return out[:, -1].float().cpu()


def score_last_position(
    model: Any, cache: PrefixCache, steering: Any = None
) -> Float[Tensor, "n vocab"]:
    """Next-token logits after each prompt (float32, CPU, prompt order), the last prompt token
    run alone on the cached prefix with ``steering`` applied (None: unsteered).

    Equals ``final_logits(model, prompts, steering=steering)`` (same batches) for position rules
    that edit only the last prompt position; others raise. ``cache`` is not changed, so one
    cache serves any number of configurations, in any order. Hooks are off on return or raise.
    """
    if cache.model is not model:
        raise UnlockLensError("this PrefixCache was built on another model: build one per model")
    if steering is not None:
        check_cacheable(steering)
    rows: dict[int, Tensor] = {}
    for batch in cache.batches:
        logits = _score_batch(model, batch, steering)
        for k, i in enumerate(batch.indices):
            rows[i] = logits[k]
    return torch.stack([rows[i] for i in range(cache.n_prompts)])


# ---------------------------------------------------------------------------------------------
# teacher-forced continuations on the same cache


def _continuation_batch(
    model: Any, batch: PrefixBatch, continuations: Sequence[Sequence[int]], steering: Any
) -> tuple[list[Float[Tensor, " m"]], Float[Tensor, "b vocab"]]:
    """Per-token log-probabilities of each row's continuation after its prompt, and the first
    next-token log-distribution.

    Two forwards on a private copy of the prefix cache: the last prompt token, steered exactly
    as in a steered prefill (its logits score the first continuation token), then the
    continuation tokens unsteered, as a KV-cache decode sees them (right-padded after the
    prompt; causal attention never lets a real token see the padding behind it).
    """
    kv = _fresh_kv(batch.kv) if batch.kv is not None else None
    first_kwargs = {**batch.last_kwargs, "use_cache": True}
    if kv is not None:
        first_kwargs["past_key_values"] = kv
    ctx = steering.applied(model) if steering is not None else nullcontext()
    with torch.inference_mode():
        with ctx:
            logits, kv = model(batch.last_ids, return_type="logits_and_cache", **first_kwargs)
        first = torch.log_softmax(logits[:, -1].float(), -1).cpu()
        rest = _teacher_forced(model, batch, continuations, kv)
    rows = []
    for k, cont in enumerate(continuations):
        head = first[k, list(cont)[:1]]
        rows.append(torch.cat([head, rest[k]]))
    return rows, first


def _teacher_forced(model: Any, batch: PrefixBatch, continuations: Sequence[Sequence[int]],
                    kv: Any) -> list[Float[Tensor, " m_minus_1"]]:
    """Log-probability of continuation token j + 1 after tokens 0..j, for every row."""
    width = max(len(c) for c in continuations) - 1
    if width <= 0:
        return [torch.zeros(0) for _ in continuations]
    device = batch.last_ids.device
    ids = torch.zeros(len(continuations), width + 1, dtype=torch.long, device=device)
    cont_mask = torch.zeros(len(continuations), width, dtype=batch.mask.dtype, device=device)
    for k, cont in enumerate(continuations):
        ids[k, : len(cont)] = torch.as_tensor(list(cont), dtype=torch.long)
        cont_mask[k, : max(len(cont) - 1, 0)] = 1
    kwargs: dict[str, Any] = {"attention_mask": torch.cat([batch.mask, cont_mask], dim=1),
                              "past_key_values": kv, "use_cache": True}
    if "position_ids" in batch.last_kwargs:
        start = batch.last_kwargs["position_ids"][:, -1:] + 1
        kwargs["position_ids"] = start + torch.arange(width, device=device)
    logits = model(ids[:, :-1], return_type="logits", **kwargs)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
    return [logp[k, : max(len(c) - 1, 0)] for k, c in enumerate(continuations)]


def score_continuations(
    model: Any,
    cache: PrefixCache,
    continuations: Sequence[Sequence[int]],
    steering: Any = None,
    *,
    return_first: bool = False,
) -> list[Float[Tensor, " m"]] | tuple[list[Float[Tensor, " m"]], Float[Tensor, "n vocab"]]:
    """Teacher-forced log-probabilities of ``continuations[i]`` (token ids) after prompt ``i``.

    The steering edits the last prompt token only, as in a steered generation's prefill, and
    generated tokens see it through the KV cache: the log-probabilities greedy generation
    would have assigned to these tokens under ``steering`` (None: unsteered). Equals a full
    forward over prompt + continuation with the edit at the last prompt position
    (``tests/test_fidelity.py``, 1e-4). One list entry per prompt, in prompt order;
    ``return_first`` also returns the first next-token log-distribution of every prompt (the
    steered last prompt position's, as :func:`score_last_position` gives it), at no extra cost.
    """
    if cache.model is not model:
        raise UnlockLensError("this PrefixCache was built on another model: build one per model")
    if len(continuations) != cache.n_prompts:
        raise UnlockLensError(
            f"{len(continuations)} continuations for {cache.n_prompts} cached prompts: pass one "
            "continuation (a list of token ids, possibly empty) per prompt, in prompt order"
        )
    if steering is not None:
        check_cacheable(steering)
    rows: dict[int, Tensor] = {}
    firsts: dict[int, Tensor] = {}
    for batch in cache.batches:
        conts = [continuations[i] for i in batch.indices]
        scored, first = _continuation_batch(model, batch, conts, steering)
        for k, (i, lp) in enumerate(zip(batch.indices, scored, strict=True)):
            rows[i], firsts[i] = lp, first[k]
    out = [rows[i] for i in range(cache.n_prompts)]
    return (out, torch.stack([firsts[i] for i in range(cache.n_prompts)])) if return_first else out
