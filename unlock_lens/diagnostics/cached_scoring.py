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

:func:`score_configurations` scores several configurations in one forward per batch: the
configurations are stacked on the batch dimension (rows = configurations x prompts, each row
edited with its own configuration's directions, alpha, layers and edit), and every row reads
the same cached prefix. The prefix is never copied per configuration into the cache: each
layer's keys and values are written once per forward into that layer's attention input (what
Hugging Face's own cache update does by concatenation) and freed after the layer, so the extra
memory is one layer's stacked keys and values at a time, not the whole cache per configuration.

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

from unlock_lens.activations import encode, forward_kwargs, hook_name, model_device, plan_batches
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

#: rows (configurations x prompts) per forward in :func:`score_configurations`: large enough
#: for the matmuls to run near their peak rate on CPU, small enough that the stacked keys and
#: values of one layer and the logits stay small (Gemma-3-270M: 256 rows x 262k vocabulary
#: = 256 MiB of float32 logits)
DEFAULT_MAX_ROWS = 256


def _stacked(prefix: Float[Tensor, "b h t d"], new: Float[Tensor, "gb h m d"],
             copies: int) -> Float[Tensor, "gb h tm d"]:
    """``cat([prefix repeated copies times, new], dim=-2)`` with the prefix written once,
    straight into the result (rows configuration-major: row ``c * b + i``)."""
    b, h, t, d = prefix.shape
    m = new.shape[-2]
    out = new.new_empty(copies, b, h, t + m, d)
    out[:, :, :, :t] = prefix
    out[:, :, :, t:] = new.view(copies, b, h, m, d)
    return out.view(copies * b, h, t + m, d)


def _broadcast_layer(layer: Any, copies: int) -> Any:
    """A copy of a dynamic cache layer whose ``update`` returns the cached prefix stacked
    ``copies`` times ahead of the new keys and values, as Hugging Face's would for a cache
    repeated on the batch dimension, without storing them: the stacked tensors live only
    while their layer's attention runs, and the shared prefix is never changed."""
    out = copy.copy(layer)
    prefix_k, prefix_v = layer.keys, layer.values

    def update(key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if out.is_sliding:  # the mask was sized from the prefix; later calls see it grown
            out.cumulative_length += key_states.shape[-2]
        return _stacked(prefix_k, key_states, copies), _stacked(prefix_v, value_states, copies)

    out.update = update
    return out


def _stacked_kv(kv: Any, copies: int) -> Any:
    """The prefix cache as seen by ``copies`` configurations stacked on the batch dimension."""
    fresh = copy.copy(kv)
    fresh.layers = [_broadcast_layer(layer, copies) for layer in kv.layers]
    return fresh


def _broadcastable(kv: Any) -> bool:
    return kv is None or (type(kv) is DynamicCache and all(
        _grows_by_concatenation(layer) and layer.is_initialized for layer in kv.layers))


@dataclass(frozen=True)
class _RowEdit:
    """One configuration's edit at one hook point: its index in the stack, its direction
    (float32, on the model's device), alpha, edit name and the new positions it touches."""

    config: int
    direction: Tensor
    alpha: float
    normalisation: str
    at: slice


def _new_positions(rule: str, n_new: int) -> slice:
    """Positions a cacheable rule edits among ``n_new`` tokens run on the prefix cache, the
    first of which is the last prompt token (``last_prompt``: it alone; ``final``: all)."""
    picked = selects(rule, torch.arange(n_new), 0).nonzero().flatten()
    return slice(int(picked[0]), int(picked[-1]) + 1)


def _edits_by_hook(model: Any, group: Sequence[Any], n_new: int) -> dict[str, list[_RowEdit]]:
    """Hook point name -> the edits of every configuration in ``group`` that steers there."""
    device = model_device(model)
    out: dict[str, list[_RowEdit]] = {}
    for c, steering in enumerate(group):
        if steering is None or steering.alpha == 0:  # alpha 0 attaches nothing (Steering.applied)
            continue
        at = _new_positions(steering.positions, n_new)
        for layer in steering.active_layers:
            direction = steering.directions[layer].to(device=device, dtype=torch.float32)
            out.setdefault(hook_name(layer, steering.hook), []).append(
                _RowEdit(c, direction, float(steering.alpha), steering.normalisation, at))
    return out


def _stacked_edit_hook(edits: list[_RowEdit], copies: int) -> Any:
    """A hook editing each configuration's block of rows with that configuration's edit."""

    def steer_rows(x: Tensor, hook: Any) -> Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        grid = x.view(copies, x.shape[0] // copies, *x.shape[1:])
        for e in edits:
            grid[e.config, :, e.at] = apply_edit(grid[e.config, :, e.at], e.direction, e.alpha,
                                                 e.normalisation)
        return x

    return steer_rows


def forward_configurations(
    model: Any, kv: Any, ids: Int[Tensor, "b m"], kwargs: dict[str, Any], group: Sequence[Any]
) -> Float[Tensor, "g b keep vocab"]:
    """One forward of ``len(group)`` configurations stacked on the batch dimension over one
    batch's cached prefix ``kv`` (None: no prefix): ``ids`` are the tokens run on the cache,
    the first being the last prompt token (what a continuation scorer appends after it
    shares this), ``kwargs`` the forward keywords for those ``b`` rows (the full attention
    mask, the new tokens' position ids, ``logits_to_keep``). Each configuration (a cacheable
    :class:`~unlock_lens.steer.Steering` or None) edits only its own rows; hooks are off on
    return or raise. Returns the kept positions' logits per configuration, in the model's dtype.
    """
    g, (b, m) = len(group), ids.shape
    stacked = {k: v.repeat(g, 1) if k in ("attention_mask", "position_ids") else v
               for k, v in kwargs.items()}
    if kv is not None:
        stacked["past_key_values"] = _stacked_kv(kv, g) if _broadcastable(kv) else copy.deepcopy(kv)
    hooks = [(name, _stacked_edit_hook(edits, g))
             for name, edits in _edits_by_hook(model, group, m).items()]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        out = model(ids.repeat(g, 1), **stacked)
    return out.view(g, b, *out.shape[1:])


def score_configurations(
    model: Any, cache: PrefixCache, steerings: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS
) -> Float[Tensor, "config n vocab"]:
    """Next-token logits after each prompt for each configuration (float32, CPU; configuration
    order, then prompt order): ``out[c]`` equals ``score_last_position(model, cache,
    steerings[c])`` and so ``final_logits(model, prompts, steering=steerings[c])``.

    ``steerings``: cacheable :class:`~unlock_lens.steer.Steering` objects (or None: unsteered),
    each free in its directions, alpha, layers, edit and hook kind. Configurations are stacked
    on the batch dimension, up to ``max_rows`` rows (configurations x prompts of a batch) per
    forward. The result holds ``configs x n x vocab`` float32 (Gemma-3-270M: 1 MiB per prompt
    and configuration): pass a long grid in chunks.
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
        per_pass = max(1, max_rows // len(batch.indices)) if _broadcastable(batch.kv) else 1
        for start in range(0, len(steerings), per_pass):
            group = steerings[start : start + per_pass]
            logits = forward_configurations(model, batch.kv, batch.last_ids, batch.last_kwargs,
                                            group)[:, :, -1].float().cpu()
            if out is None:
                out = logits.new_empty(len(steerings), cache.n_prompts, logits.shape[-1])
            out[start : start + len(group), batch.indices] = logits
    assert out is not None
    return out
