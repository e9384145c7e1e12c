"""First-token measures of many configurations without holding their logits.

A sweep asks, per configuration and prompt, a few numbers of the next-token distribution q
against a reference p: KL(p || q), the entropy of q, log q of a few tokens, q's top token. All
of them are sums over the vocabulary of the logits z (lse = log sum exp z):

    KL(p || q) = sum p log p - sum p z + lse        H(q) = lse - sum q z

so the vocabulary can be read out in chunks, each chunk's logits folded into running sums
(an online logsumexp) and dropped. On a 262k-token vocabulary that avoids writing, faulting in
and rereading 1 MiB of float32 per row, which cost about as much as the unembedding's matmul
itself; each chunk's weights are read once for every row of a forward, so the matmuls stay
large.

:func:`readout_configurations` runs the configurations side by side on the prefix cache
(:func:`~unlock_lens.diagnostics.cached_scoring.readout_inputs`), stops at the unembedding's
input and reads the vocabulary out itself: exact when the model's logits are a plain linear
map of that input, which :func:`linear_readout` checks on the cache's first batch (a model
with logit soft-capping or scaling fails the check, and its logits are taken from the
model instead, with the same sums). Tested against full steered prefills
(``tests/test_readout.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlock_lens.diagnostics.cached_scoring import (
    DEFAULT_MAX_ROWS,
    PrefixCache,
    _check_cache,
    check_cacheable,
    forward_configurations,
    readout_inputs,
)
from unlock_lens.errors import UnlockLensError

#: vocabulary columns read out at once on a CPU: [rows, chunk] float32 stays near the caches
#: (4 MiB at 1024 rows)
DEFAULT_VOCAB_CHUNK = 1024

#: rows (prompts x configurations) per forward on a CPU when the vocabulary is read out in
#: chunks: no rows x vocabulary logits are held, so forwards can be wider than ``DEFAULT_MAX_ROWS``
STREAMED_MAX_ROWS = 1024

#: the same two on an accelerator, where each chunk is a kernel launch: (rows, chunk), a 512 MiB
#: buffer (H200, 540 x 64 grid: ``benchmarks/README.md``)
ACCELERATOR_SIZES = (4096, 32768)

#: prompts per prefix-cache batch for read-out scoring: 8 prompts leave 128 configurations to a
#: 1024-row forward, so the prefix's keys and values (which the bridge's attention copies per
#: query head) serve many configurations per copy. Gemma-3-270M, 540 x 64 grid
#: (``benchmarks/README.md``): 0.73-0.77 of the matmul rate and 1.32-1.40x the floor at 8
#: (three runs), 0.70-0.73 and 1.41-1.44x at 16 (two runs)
STREAMED_PREFIX_BATCH = 8


@dataclass(frozen=True)
class ReadoutStats:
    """Per row of the next-token logits z: ``lse`` = log sum exp z, ``ref_dot`` = sum p z
    (p: the reference's probabilities), ``q_dot`` = sum q z (q = softmax z; NaN when not asked
    for), ``argmax``, and ``at_tokens`` = z at each row's requested tokens."""

    lse: Float[Tensor, " r"]
    ref_dot: Float[Tensor, " r"]
    q_dot: Float[Tensor, " r"]
    argmax: Int[Tensor, " r"]
    at_tokens: Float[Tensor, "r m"]

    def kl(self, ref_neg_entropy: Float[Tensor, " r"]) -> Float[Tensor, " r"]:
        """KL(p || q), given sum p log p of the reference."""
        return ref_neg_entropy - self.ref_dot + self.lse

    def entropy(self) -> Float[Tensor, " r"]:
        return self.lse - self.q_dot

    def log_q(self) -> Float[Tensor, "r m"]:
        """log q of the requested tokens."""
        return self.at_tokens - self.lse[:, None]

    def _fields(self) -> tuple[Tensor, ...]:
        return self.lse, self.ref_dot, self.q_dot, self.argmax, self.at_tokens

    def rows(self, index: Tensor | slice) -> ReadoutStats:
        return ReadoutStats(*(t[index] for t in self._fields()))

    def to(self, device: str | torch.device) -> ReadoutStats:
        return ReadoutStats(*(t.to(device) for t in self._fields()))


def vocab_sums(
    chunks: Iterator[tuple[int, Float[Tensor, "r c"]]], *, with_entropy: bool = True
) -> tuple[Float[Tensor, " r"], Float[Tensor, " r"], Int[Tensor, " r"]]:
    """``(lse, sum q z, argmax)`` of logits z given as ``(first column, z[:, first:first + c])``
    chunks in any column order: an online logsumexp (running max M, S = sum exp(z - M),
    T = sum exp(z - M)(z - M), rescaled when M grows) and a running argmax (the lowest column on
    ties, as ``argmax``). Each chunk is overwritten (pass buffers the caller owns); ``sum q z``
    is NaN without ``with_entropy``, which saves one pass over every chunk."""
    m = s = t = argmax = best = None
    for start, z in chunks:
        chunk_max, chunk_arg = z.max(-1)
        if m is None:
            m, s, t = torch.full_like(chunk_max, -torch.inf), torch.zeros_like(chunk_max), torch.zeros_like(chunk_max)
            best, argmax = torch.full_like(chunk_max, -torch.inf), torch.zeros_like(chunk_arg)
        column = chunk_arg + start
        better = (chunk_max > best) | ((chunk_max == best) & (column < argmax))
        best, argmax = torch.where(better, chunk_max, best), torch.where(better, column, argmax)
        new_m = torch.maximum(m, chunk_max)
        scale = torch.exp(m - new_m)
        shift = torch.where(s > 0, (m - new_m) * s, 0.0)  # T's terms gain (M_old - M_new) each
        z.sub_(new_m[:, None])
        if with_entropy:
            e = torch.exp(z)
            t = scale * (t + shift) + torch.einsum("rc,rc->r", e, z)
            s = scale * s + e.sum(-1)
        else:
            s = scale * s + z.exp_().sum(-1)
        m = new_m
    if m is None:
        raise UnlockLensError("no vocabulary chunks to read out")
    q_dot = m + t / s if with_entropy else torch.full_like(m, torch.nan)
    return m + s.log(), q_dot, argmax


def logit_chunks(logits: Float[Tensor, "r vocab"], chunk: int = DEFAULT_VOCAB_CHUNK) -> Iterator[tuple[int, Tensor]]:
    """Column chunks of logits already held, copied into one reused buffer (so
    :func:`vocab_sums` may overwrite them)."""
    buffer = logits.new_empty(logits.shape[0], min(chunk, logits.shape[1]))
    for start in range(0, logits.shape[1], chunk):
        part = logits[:, start : start + chunk]
        out = buffer[:, : part.shape[1]]
        out.copy_(part)
        yield start, out


def linear_chunks(
    states: Float[Tensor, "r d_model"], weight: Float[Tensor, "vocab d_model"], bias: Tensor | None,
    chunk: int = DEFAULT_VOCAB_CHUNK,
) -> Iterator[tuple[int, Float[Tensor, "r c"]]]:
    """``states @ weight.T + bias`` column chunk by column chunk, into one reused buffer."""
    buffer = states.new_empty(states.shape[0], min(chunk, weight.shape[0]))
    for start in range(0, weight.shape[0], chunk):
        w = weight[start : start + chunk]
        out = buffer[:, : w.shape[0]]
        torch.mm(states, w.T, out=out)
        if bias is not None:
            out += bias[start : start + chunk]
        yield start, out


def stats_from_logits(
    logits: Float[Tensor, "g b vocab"], ref_p: Float[Tensor, "b vocab"], tokens: Int[Tensor, "b m"],
    *, with_entropy: bool = True, vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> ReadoutStats:
    """:class:`ReadoutStats` of held logits, ``g`` groups of the ``b`` prompts of ``ref_p`` and
    ``tokens`` (rows ``k * b + i`` of the result: group ``k``, prompt ``i``)."""
    g, b, _ = logits.shape
    flat = logits.reshape(g * b, -1)
    lse, q_dot, argmax = vocab_sums(logit_chunks(flat, vocab_chunk), with_entropy=with_entropy)
    ref_dot = torch.einsum("gbv,bv->gb", logits, ref_p).reshape(-1)
    at_tokens = logits.gather(-1, tokens.expand(g, -1, -1)).reshape(g * b, -1)
    return ReadoutStats(lse, ref_dot, q_dot, argmax, at_tokens)


def stats_from_states(
    states: Float[Tensor, "g b d_model"], weight: Float[Tensor, "vocab d_model"], bias: Tensor | None,
    ref_p: Float[Tensor, "b vocab"], tokens: Int[Tensor, "b m"],
    *, with_entropy: bool = True, vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> ReadoutStats:
    """:class:`ReadoutStats` of the logits ``states @ weight.T + bias`` without holding them.
    The sums linear in z need no pass over the vocabulary: sum p z = x . (p W) + p . bias, and
    z at a token is x . W[token] + bias[token]."""
    return _linear_stats(states, weight, bias, _Projected.of(ref_p, tokens, weight, bias),
                         with_entropy=with_entropy, vocab_chunk=vocab_chunk)


@dataclass(frozen=True)
class _Projected:
    """A batch's reference and tokens through the unembedding: p W, p . bias, W[tokens], bias[tokens]."""

    ref_w: Float[Tensor, "b d_model"]
    ref_b: Float[Tensor, " b"]
    token_w: Float[Tensor, "b m d_model"]
    token_b: Float[Tensor, "b m"]

    @staticmethod
    def of(ref_p: Tensor, tokens: Tensor, weight: Tensor, bias: Tensor | None) -> _Projected:
        if bias is None:
            return _Projected(ref_p @ weight, ref_p.new_zeros(ref_p.shape[0]), weight[tokens],
                              ref_p.new_zeros(tokens.shape))
        return _Projected(ref_p @ weight, ref_p @ bias, weight[tokens], bias[tokens])


def _linear_stats(states: Tensor, weight: Tensor, bias: Tensor | None, projected: _Projected, *,
                  with_entropy: bool, vocab_chunk: int) -> ReadoutStats:
    g, b, _ = states.shape
    lse, q_dot, argmax = vocab_sums(linear_chunks(states.reshape(g * b, -1), weight, bias, vocab_chunk),
                                    with_entropy=with_entropy)
    ref_dot = torch.einsum("gbd,bd->gb", states, projected.ref_w) + projected.ref_b
    at_tokens = torch.einsum("gbd,bmd->gbm", states, projected.token_w) + projected.token_b
    return ReadoutStats(lse, ref_dot.reshape(-1), q_dot, argmax, at_tokens.reshape(g * b, -1))


def linear_readout(model: Any, cache: PrefixCache) -> tuple[Tensor, Tensor | None] | None:
    """The unembedding's (weight, bias) when the model's logits are exactly ``x @ weight.T +
    bias`` of ``unembed.hook_in``'s input x, checked once per cache on its first batch
    (unsteered; 1e-4 of the logits' scale); None otherwise (soft-capped or scaled logits, a
    non-Linear head), and callers then take the logits from the model."""
    if "linear_readout" in cache.memo:
        return cache.memo["linear_readout"]
    head = getattr(getattr(model, "unembed", None), "original_component", None)
    found = None
    if isinstance(head, torch.nn.Linear) and cache.batches:
        batch = cache.batches[0]
        with torch.inference_mode():
            weight = head.weight.detach()
            bias = head.bias.detach() if head.bias is not None and bool(head.bias.any()) else None
            states = readout_inputs(model, batch, batch.last_ids, [None])[:, 0, -1]
            logits = forward_configurations(model, batch, batch.last_ids, [None])[:, 0, -1]
            ours = torch.nn.functional.linear(states, weight.float(), None if bias is None else bias.float())
        if (ours - logits).abs().max() <= 1e-4 * max(1.0, float(logits.abs().max())):
            found = (weight, bias)
    cache.memo["linear_readout"] = found
    return found


def readout_configurations(
    model: Any,
    cache: PrefixCache,
    steerings: Sequence[Any],
    ref_p: Float[Tensor, "n vocab"],
    tokens: Int[Tensor, "n m"],
    *,
    max_rows: int | None = None,
    vocab_chunk: int | None = None,
    with_entropy: bool = True,
) -> Iterator[ReadoutStats]:
    """:class:`ReadoutStats` of each configuration's next-token logits after each prompt (rows in
    prompt order), against the reference probabilities ``ref_p`` and at ``tokens`` (per
    prompt): what :func:`stats_from_logits` gives on ``score_configurations``'s logits, without
    holding them. Yielded in configuration order as each group finishes (``list()`` them for
    all): configurations run side by side on the shared prefix, up to ``max_rows`` rows a
    forward (default: :data:`STREAMED_MAX_ROWS` when the vocabulary is read out here, else
    :data:`~unlock_lens.diagnostics.cached_scoring.DEFAULT_MAX_ROWS`), every batch of prompts
    per group, ``vocab_chunk`` columns at a time (default :data:`DEFAULT_VOCAB_CHUNK`; on an
    accelerator both defaults are :data:`ACCELERATOR_SIZES`). Bad input is refused at the call,
    before any forward."""
    _check_cache(model, cache)
    if len(steerings) == 0:
        raise UnlockLensError("no configurations to score: pass at least one steering (or None)")
    if tuple(ref_p.shape[:1]) != (cache.n_prompts,) or tokens.shape[0] != cache.n_prompts:
        raise UnlockLensError(
            f"the reference has {ref_p.shape[0]} rows and the tokens {tokens.shape[0]} for "
            f"{cache.n_prompts} cached prompts: pass one row per prompt, in prompt order")
    vocab = int(model.cfg.d_vocab)
    if ref_p.shape[-1] != vocab:
        raise UnlockLensError(f"the reference covers {ref_p.shape[-1]} tokens, the model's vocabulary "
                              f"{vocab} tokens: take the reference from this model")
    if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < vocab:
        raise UnlockLensError(f"token ids must lie in [0, {vocab}), got {int(tokens.min())}..{int(tokens.max())}")
    if max_rows is not None and max_rows < 1:
        raise UnlockLensError(f"max_rows must be >= 1, got {max_rows}")
    if vocab_chunk is not None and vocab_chunk < 1:
        raise UnlockLensError(f"vocab_chunk must be >= 1, got {vocab_chunk}")
    for steering in steerings:  # all refused before any forward
        if steering is not None:
            check_cacheable(steering)
            steering.fwd_hooks(model)
    return _readout_groups(model, cache, steerings, ref_p, tokens, max_rows, vocab_chunk, with_entropy)


def _readout_groups(model: Any, cache: PrefixCache, steerings: Sequence[Any], ref_p: Tensor, tokens: Tensor,
                    max_rows: int | None, vocab_chunk: int | None, with_entropy: bool) -> Iterator[ReadoutStats]:
    readout = linear_readout(model, cache)
    if readout is not None:
        weight, bias = readout[0].float(), None if readout[1] is None else readout[1].float()
    on_cpu = not cache.batches or cache.batches[0].last_ids.device.type == "cpu"
    streamed_rows, chunk = (STREAMED_MAX_ROWS, DEFAULT_VOCAB_CHUNK) if on_cpu else ACCELERATOR_SIZES
    rows = max_rows or (streamed_rows if readout is not None else DEFAULT_MAX_ROWS)
    vocab_chunk = vocab_chunk or chunk
    per_batch = []  # the reference side of every batch, once for all configurations
    for batch in cache.batches:
        device = batch.last_ids.device
        batch_p = ref_p[batch.indices].to(device=device, dtype=torch.float32)
        batch_tokens = tokens[batch.indices].to(device=device, dtype=torch.long)
        projected = _Projected.of(batch_p, batch_tokens, weight, bias) if readout is not None else None
        per_batch.append((batch, batch_p, batch_tokens, projected))
    per_pass = max(1, rows // max(len(batch.indices) for batch in cache.batches))
    for start in range(0, len(steerings), per_pass):
        group = steerings[start : start + per_pass]
        parts: list[list[tuple[list[int], ReadoutStats]]] = [[] for _ in group]
        for batch, batch_p, batch_tokens, projected in per_batch:
            if projected is not None:
                states = readout_inputs(model, batch, batch.last_ids, group)[:, :, -1].transpose(0, 1)
                stats = _linear_stats(states.contiguous(), weight, bias, projected,
                                      with_entropy=with_entropy, vocab_chunk=vocab_chunk)
            else:
                logits = forward_configurations(model, batch, batch.last_ids, group)[:, :, -1].transpose(0, 1)
                stats = stats_from_logits(logits, batch_p, batch_tokens, with_entropy=with_entropy,
                                          vocab_chunk=vocab_chunk)
            b = len(batch.indices)
            for c in range(len(group)):
                parts[c].append((batch.indices, stats.rows(slice(c * b, (c + 1) * b))))
        for part in parts:
            yield _in_prompt_order(part, cache.n_prompts)


def _in_prompt_order(parts: list[tuple[list[int], ReadoutStats]], n: int) -> ReadoutStats:
    order = torch.empty(n, dtype=torch.long)
    position = 0
    for indices, _ in parts:
        order[torch.as_tensor(indices)] = torch.arange(position, position + len(indices))
        position += len(indices)
    joined = ReadoutStats(*(torch.cat(ts) for ts in zip(*(s._fields() for _, s in parts), strict=True)))
    return joined.to("cpu").rows(order)
