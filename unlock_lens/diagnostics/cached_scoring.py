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
>>> stacked = score_configurations(model, cache, [steering.scaled(a) for a in (0.05, 0.1, 0.5)])  # doctest: +SKIP

:func:`score_configurations` scores several configurations in one forward per batch: they run
side by side on the sequence axis (the last prompt token once per configuration, every copy at
the last prompt position, attending to the shared prefix and to itself only through a 4D
attention mask), each copy edited with its own configuration's directions, alpha, layers and
edit. The prefix's keys and values are read once per forward for all of them and never copied
per configuration, so the matmuls see prompts x configurations rows while the attention reads
the cache once.

:func:`readout_inputs` runs the same forward but stops at the unembedding's input, for
:mod:`~unlock_lens.diagnostics.readout` to read the vocabulary out in chunks: on a 262k-token
vocabulary, holding rows x vocabulary logits costs about as much as the unembedding's matmul.

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
from transformer_lens.model_bridge.exceptions import StopAtLayerException
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from unlock_lens.activations import (
    encode,
    forward_kwargs,
    hook_name,
    model_device,
    plan_batches,
    position_ids,
)
from unlock_lens.compat import bridge_kv_cache_keyword
from unlock_lens.errors import UnlockLensError
from unlock_lens.interventions import apply_edit, selects
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
    #: what is learned about the model once per cache (``readout.linear_readout``'s check)
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


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


def _check_cache(model: Any, cache: PrefixCache) -> None:
    if cache.model is not model:
        raise UnlockLensError("this PrefixCache was built on another model: build one per model")


def score_last_position(
    model: Any, cache: PrefixCache, steering: Any = None
) -> Float[Tensor, "n vocab"]:
    """Next-token logits after each prompt (float32, CPU, prompt order), the last prompt token
    run alone on the cached prefix with ``steering`` applied (None: unsteered).

    Equals ``final_logits(model, prompts, steering=steering)`` (same batches) for position rules
    that edit only the last prompt position; others raise. ``cache`` is not changed, so one
    cache serves any number of configurations, in any order. Hooks are off on return or raise.
    """
    _check_cache(model, cache)
    if steering is not None:
        check_cacheable(steering)
    rows: dict[int, Tensor] = {}
    for batch in cache.batches:
        logits = _score_batch(model, batch, steering)
        for k, i in enumerate(batch.indices):
            rows[i] = logits[k]
    return torch.stack([rows[i] for i in range(cache.n_prompts)])


# ---- several configurations in one forward ---------------------------------------------------

#: query positions (prompts x configurations) per forward in :func:`score_configurations`:
#: large enough for the matmuls to run near their peak rate on CPU, small enough that the
#: logits stay small (Gemma-3-270M: 512 positions x 262k vocabulary = 512 MiB of float32)
DEFAULT_MAX_ROWS = 512


@dataclass(frozen=True)
class _Edit:
    """One configuration's edit at one hook point: its block of query positions, its
    direction (float32, on the model's device), alpha, edit name, and the positions of the
    block it touches."""

    config: int
    direction: Tensor
    alpha: float
    normalisation: str
    at: slice


def _block_positions(rule: str, block: int) -> slice:
    """Positions a cacheable rule edits in a block of ``block`` tokens run on the prefix
    cache, the first being the last prompt token (``last_prompt``: it alone; ``final``: all)."""
    picked = selects(rule, torch.arange(block), 0).nonzero().flatten()
    return slice(int(picked[0]), int(picked[-1]) + 1)


def _edits_by_hook(model: Any, group: Sequence[Any], block: int) -> dict[str, list[_Edit]]:
    """Hook point name -> the edits of every configuration in ``group`` that steers there."""
    device = model_device(model)
    out: dict[str, list[_Edit]] = {}
    for c, steering in enumerate(group):
        if steering is None or steering.alpha == 0:  # alpha 0 attaches nothing (Steering.applied)
            continue
        at = _block_positions(steering.positions, block)
        for layer in steering.active_layers:
            direction = steering.directions[layer].to(device=device, dtype=torch.float32)
            out.setdefault(hook_name(layer, steering.hook), []).append(
                _Edit(c, direction, float(steering.alpha), steering.normalisation, at))
    return out


def _block_edit_hook(edits: list[_Edit], block: int) -> Any:
    """A hook editing each configuration's block of positions with that configuration's edit."""

    def steer_blocks(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        for e in edits:
            at = slice(e.config * block + e.at.start, e.config * block + e.at.stop)
            x[:, at] = apply_edit(x[:, at], e.direction, e.alpha, e.normalisation)
        return x

    return steer_blocks


def _block_masks(kv: Any, mask: Int[Tensor, "b pos"], configs: int, block: int) -> Any:
    """The 4D attention masks (True = attend) for ``configs`` blocks of ``block`` tokens run
    side by side on the prefix: every block sees the (padded) prefix and, causally, its own
    tokens, never another block's. One mask per kind of cache layer (full / sliding window,
    keyed as the model's ``config.layer_types``), sized as the layer's cache reports."""
    b, n_new = mask.shape[0], configs * block
    prefix = mask[:, : mask.shape[1] - 1].bool()
    own = torch.block_diag(*[torch.ones(block, block, dtype=torch.bool).tril()] * configs)
    own = own.to(mask.device).expand(b, 1, n_new, n_new)
    layers = kv.layers if kv is not None else [None]
    out: dict[str, Tensor] = {}
    for layer in layers:
        kind = "sliding_attention" if getattr(layer, "is_sliding", False) else "full_attention"
        if kind in out:
            continue
        kv_len, kv_offset = layer.get_mask_sizes(n_new) if layer is not None else (n_new, 0)
        seen = prefix[:, kv_offset : kv_offset + kv_len - n_new]  # the prefix columns this layer keeps
        seen = seen[:, None, None, :].expand(b, 1, n_new, seen.shape[1])
        if kind == "sliding_attention":  # a block's later tokens may slide past the oldest columns
            query = prefix.shape[1] + torch.arange(block, device=mask.device).repeat(configs)
            column = kv_offset + torch.arange(seen.shape[-1], device=mask.device)
            seen = seen & (column[None, :] > query[:, None] - layer.sliding_window)
        out[kind] = torch.cat([seen, own], dim=-1)
    return out if len(out) > 1 else next(iter(out.values()))


def forward_configurations(
    model: Any, batch: PrefixBatch, tokens: Int[Tensor, "b block"], group: Sequence[Any]
) -> Float[Tensor, "b g block vocab"]:
    """One forward of ``len(group)`` configurations side by side on one batch's cached prefix.

    ``tokens`` (the last prompt token first, then any continuation a scorer teacher-forces)
    are repeated once per configuration along the sequence axis: configuration ``c`` owns
    query positions ``c * block ... (c + 1) * block - 1``, all at the positions that follow
    the prompt, attending to the shared prefix and causally to its own block only (4D masks),
    and only its own block gets its edits. The prefix's keys and values are read once per
    forward for every configuration, never copied per configuration. Each configuration is a
    cacheable :class:`~unlock_lens.steer.Steering` or None; hooks are off on return or raise.
    Returns every position's logits (float32, on the model's device).
    """
    (b, block), g = tokens.shape, len(group)
    return _run_configurations(model, batch, tokens, group).float().view(b, g, block, -1)


def readout_inputs(
    model: Any, batch: PrefixBatch, tokens: Int[Tensor, "b block"], group: Sequence[Any]
) -> Float[Tensor, "b g block d_model"]:
    """:func:`forward_configurations` stopped at the unembedding's input (``unembed.hook_in``:
    the final-normalised residual stream), for a caller that reads the vocabulary out in chunks
    (:mod:`~unlock_lens.diagnostics.readout`) instead of holding rows x vocabulary logits."""
    (b, block), g = tokens.shape, len(group)
    return _run_configurations(model, batch, tokens, group, stop_at=READOUT_HOOK).float().view(b, g, block, -1)


#: the hook whose input the unembedding reads (a TransformerBridge's name)
READOUT_HOOK = "unembed.hook_in"


def _run_configurations(model: Any, batch: PrefixBatch, tokens: Int[Tensor, "b block"],
                        group: Sequence[Any], stop_at: str | None = None) -> Tensor:
    g, block = len(group), tokens.shape[1]
    kwargs = dict(batch.last_kwargs)
    last_position = kwargs.get("position_ids", position_ids(batch.mask)[:, -1:])
    kwargs["position_ids"] = last_position + torch.arange(block, device=tokens.device).repeat(g)
    kwargs["attention_mask"] = _block_masks(batch.kv, batch.mask, g, block)
    kwargs["logits_to_keep"] = g * block
    if batch.kv is not None:
        kwargs["past_key_values"] = _fresh_kv(batch.kv)
    hooks = [(name, _block_edit_hook(edits, block))
             for name, edits in _edits_by_hook(model, group, block).items()]
    if stop_at is not None:  # the bridge returns a StopAtLayerException's tensor as its output
        hooks.append((stop_at, _stop_with_input))
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        return model(tokens.repeat(1, g), **kwargs)


def _stop_with_input(x: Tensor, hook: Any) -> Tensor:
    raise StopAtLayerException(x)


def score_configurations(
    model: Any, cache: PrefixCache, steerings: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS
) -> Float[Tensor, "config n vocab"]:
    """Next-token logits after each prompt for each configuration (float32, CPU; configuration
    order, then prompt order): ``out[c]`` equals ``score_last_position(model, cache,
    steerings[c])`` and so ``final_logits(model, prompts, steering=steerings[c])``.

    ``steerings``: cacheable :class:`~unlock_lens.steer.Steering` objects (or None: unsteered),
    each free in its directions, alpha, layers, edit and hook kind. Up to ``max_rows`` query
    positions (prompts of a batch x configurations) run in one forward, the configurations
    side by side on the shared prefix (:func:`forward_configurations`). The result holds
    ``configs x n x vocab`` float32 (Gemma-3-270M: 1 MiB per prompt and configuration): pass
    a long grid in chunks.
    """
    _check_cache(model, cache)
    if len(steerings) == 0:
        raise UnlockLensError("no configurations to score: pass at least one steering (or None)")
    if max_rows < 1:
        raise UnlockLensError(f"max_rows must be >= 1, got {max_rows}")
    for steering in steerings:  # all refused before any forward
        if steering is not None:
            check_cacheable(steering)
            steering.fwd_hooks(model)  # the same model, layer and width checks as applied()
    out: Tensor | None = None
    for batch in cache.batches:
        per_pass = max(1, max_rows // len(batch.indices))
        for start in range(0, len(steerings), per_pass):
            group = steerings[start : start + per_pass]
            logits = forward_configurations(model, batch, batch.last_ids, group)[:, :, -1].cpu()
            if out is None:
                out = logits.new_empty(len(steerings), cache.n_prompts, logits.shape[-1])
            out[start : start + len(group), batch.indices] = logits.transpose(0, 1)
    assert out is not None
    return out


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


def continuation_loglik(
    model: Any,
    cache: PrefixCache,
    continuations: Sequence[Sequence[int]],
    steerings: Sequence[Any],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[Float[Tensor, "config n"], Float[Tensor, "config n vocab"]]:
    """Summed teacher-forced log-likelihood of ``continuations[i]`` after prompt ``i`` under each
    configuration, and each configuration's first next-token log-distribution, many
    configurations per forward.

    Each configuration runs one block side by side on the shared prefix
    (:func:`forward_configurations`): the last prompt token (edited as in a steered prefill),
    then the continuation but its last token (right-padded; causal masks keep padding out of
    sight of every real token). ``out[0][c].sum()`` per prompt equals
    ``score_continuations(model, cache, continuations, steerings[c])`` summed, and
    ``out[1][c]`` the log-softmax of ``score_last_position`` (``tests/test_fidelity.py``).
    Up to ``max_rows`` query positions per forward; the second output holds configs x n x
    vocab float32, so pass long lists of configurations in chunks.
    """
    _check_cache(model, cache)
    if len(continuations) != cache.n_prompts:
        raise UnlockLensError(
            f"{len(continuations)} continuations for {cache.n_prompts} cached prompts: pass one "
            "continuation (a list of token ids, possibly empty) per prompt, in prompt order"
        )
    if len(steerings) == 0:
        raise UnlockLensError("no configurations to score: pass at least one steering (or None)")
    for steering in steerings:
        if steering is not None:
            check_cacheable(steering)
            steering.fwd_hooks(model)
    loglik = torch.zeros(len(steerings), cache.n_prompts, dtype=torch.float64)
    first: Tensor | None = None
    for batch in cache.batches:
        conts = [list(continuations[i]) for i in batch.indices]
        b, block = len(conts), max(1, max(len(c) for c in conts))
        device = batch.last_ids.device
        tokens = torch.zeros(b, block, dtype=torch.long, device=device)
        targets = torch.zeros(b, block, dtype=torch.long, device=device)
        valid = torch.zeros(b, block, dtype=torch.bool, device=device)
        tokens[:, 0] = batch.last_ids[:, 0]
        for k, c in enumerate(conts):
            tokens[k, 1 : len(c)] = torch.as_tensor(c[:-1], dtype=torch.long)
            targets[k, : len(c)] = torch.as_tensor(c, dtype=torch.long)
            valid[k, : len(c)] = True
        per_pass = max(1, max_rows // (b * block))
        for start in range(0, len(steerings), per_pass):
            group = steerings[start : start + per_pass]
            logp = torch.log_softmax(forward_configurations(model, batch, tokens, group), -1)
            picked = logp.gather(-1, targets[:, None, :, None].expand(b, len(group), block, 1)).squeeze(-1)
            ll = (picked.double() * valid[:, None, :]).sum(-1)
            loglik[start : start + len(group), batch.indices] = ll.T.cpu()
            if first is None:
                first = logp.new_empty(len(steerings), cache.n_prompts, logp.shape[-1], device="cpu")
            first[start : start + len(group), batch.indices] = logp[:, :, 0].transpose(0, 1).cpu()
    assert first is not None
    return loglik, first
