"""Alignment data: which paired states of source and target an alignment is fitted on.

``AlignSpec.data`` names one kind or a ``+``-joined combination:

- ``last``: the last prompt token of each alignment prompt (the authors'; one pair per prompt);
- ``tokens``: every position of the alignment prompts, paired across the two tokenizers where
  both tokens end at the same character of the text the prompts share
  (:func:`unlock_lens.align.pairs.shared_token_ends`); with one tokenizer every position pairs;
- ``text``: prefixes of the alignment texts cut at word ends, each fed in both models' locked
  formats, paired at their last prompt tokens;
- ``continuations``: the source's own greedy output on each alignment text under its
  *unlocked* variant (CoT prompt, trigger; :func:`~unlock_lens.generation.generate_continuations`), appended as plain
  text to each model's *locked* prompt and teacher-forced through both; the positions inside
  the continuation are paired where both tokens end at the same character of it
  (:func:`unlock_lens.align.pairs.block_token_ends`). Label-free: it shows the maps the states
  in which the unlocked behaviour is expressed.

Pairs are planned from tokenisation alone, subsampled to ``max_pairs`` with a seed, then
captured in lockstep (a chunk of prompts through the source, the same through the target) and
folded into per-layer :class:`~unlock_lens.align.stats.GramStats`: memory depends on d and
the chunk, never on the number of pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import FinalLayer, HookKind, Variant, iter_capture_positions, tokenize
from unlock_lens.align.layers import LayerPairing
from unlock_lens.align.pairs import block_token_ends, shared_token_ends, word_end_prefixes
from unlock_lens.align.stats import GramStats
from unlock_lens.errors import UnlockLensError

DATA_KINDS = ("last", "tokens", "text", "continuations")


def parse_data(data: str) -> tuple[str, ...]:
    """``"tokens+last"`` -> ``("tokens", "last")``; refuses unknown kinds."""
    kinds = tuple(k.strip() for k in str(data).split("+") if k.strip())
    bad = [k for k in kinds if k not in DATA_KINDS]
    if "contrasts" in bad:
        raise UnlockLensError(
            f"alignment data {data!r}: 'contrasts' is fitted from other axes' keys, not from "
            "alignment prompts: use unlock_lens.align.fit_contrast_maps (token_stats= for a mix)")
    if not kinds or bad:
        raise UnlockLensError(f"alignment data {data!r}: use one of {DATA_KINDS} or a '+'-joined "
                              "combination, e.g. 'tokens+last'")
    return kinds


@dataclass
class PromptPairs:
    """One source prompt, one target prompt, and the paired token positions in each."""

    source_prompt: str
    target_prompt: str
    source_positions: list[int] = field(default_factory=list)
    target_positions: list[int] = field(default_factory=list)

    def add(self, i_src: int, i_tgt: int) -> None:
        if i_src not in self.source_positions:
            self.source_positions.append(i_src)
            self.target_positions.append(i_tgt)


def _check_continuations(kinds: tuple[str, ...], texts: Sequence[str],
                         continuations: Sequence[str] | None) -> None:
    if "continuations" not in kinds:
        return
    if continuations is None:
        raise UnlockLensError(
            "alignment data 'continuations' needs the source's unlocked outputs, one per alignment "
            "text: pass continuations=generate_continuations(unlocked, texts) (align_key and "
            "build_pack do it when given unlocked=Variant(source model, its unlocked format))")
    if isinstance(continuations, str) or len(continuations) != len(texts):
        n = "a string" if isinstance(continuations, str) else f"{len(continuations)} continuations"
        raise UnlockLensError(f"got {n} for {len(texts)} alignment texts: pass one continuation "
                              "(a string) per text, in the same order")


def plan_pairs(source: Variant, target: Variant, texts: Sequence[str], data: str = "tokens", *,
               max_pairs: int | None = None, seed: int = 0,
               continuations: Sequence[str] | None = None) -> list[PromptPairs]:
    """The prompt pairs and token positions to capture (no forward pass). ``continuations``:
    one text per alignment text (the ``continuations`` kind's; ignored by the other kinds)."""
    kinds = parse_data(data)
    _check_continuations(kinds, texts, continuations)
    plans: dict[tuple[str, str], PromptPairs] = {}

    def plan(question: str, cont: str = "") -> PromptPairs:
        ps, pt = (v.format.render(question, v.model.tokenizer) + cont for v in (source, target))
        return plans.setdefault((ps, pt), PromptPairs(ps, pt))

    def last_tokens(entry: PromptPairs) -> None:
        entry.add(*(len(tokenize(v.model, p, special_tokens=v.special_tokens)[0]) - 1
                    for v, p in ((source, entry.source_prompt), (target, entry.target_prompt))))

    def spans(entry: PromptPairs) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return tuple(tokenize(v.model, p, special_tokens=v.special_tokens, offsets=True)[1]  # type: ignore[return-value]
                     for v, p in ((source, entry.source_prompt), (target, entry.target_prompt)))

    for i, text in enumerate(texts):
        if "last" in kinds:
            last_tokens(plan(text))
        if "tokens" in kinds:
            entry = plan(text)
            spans_s, spans_t = spans(entry)
            for i_s, i_t in shared_token_ends(entry.source_prompt, spans_s, entry.target_prompt, spans_t):
                entry.add(i_s, i_t)
        if "text" in kinds:
            for prefix in word_end_prefixes(text):
                last_tokens(plan(prefix))
        if "continuations" in kinds:  # paired inside the continuation only, after each locked prompt
            cont = continuations[i]  # type: ignore[index]
            entry = plan(text, cont)
            for i_s, i_t in block_token_ends(*spans(entry), len(entry.source_prompt) - len(cont),
                                             len(entry.target_prompt) - len(cont), len(cont)):
                entry.add(i_s, i_t)
    out = [p for p in plans.values() if p.source_positions]
    return subsample(out, max_pairs, seed)


def subsample(plans: list[PromptPairs], max_pairs: int | None, seed: int) -> list[PromptPairs]:
    """At most ``max_pairs`` pairs, drawn uniformly with ``seed`` (prompts left without a pair
    are dropped)."""
    total = sum(len(p.source_positions) for p in plans)
    if max_pairs is None or total <= max_pairs:
        return plans
    if max_pairs < 2:
        raise UnlockLensError(f"max_pairs={max_pairs}: an alignment needs at least 2 pairs")
    gen = torch.Generator().manual_seed(int(seed))
    keep = set(torch.randperm(total, generator=gen)[:max_pairs].tolist())
    out, k = [], 0
    for p in plans:
        chosen = [j for j in range(len(p.source_positions)) if k + j in keep]
        k += len(p.source_positions)
        if chosen:
            out.append(PromptPairs(p.source_prompt, p.target_prompt,
                                   [p.source_positions[j] for j in chosen],
                                   [p.target_positions[j] for j in chosen]))
    return out


def _pair_chunks(
    source: Variant, target: Variant, texts: Sequence[str], pairing: LayerPairing, data: str,
    max_pairs: int | None, seed: int, hook: HookKind, final_layer: FinalLayer, batch_size: int,
    progress: bool, continuations: Sequence[str] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(source [pairs, Ls, d_s], target [pairs, Lt, d_t]) states of every planned pair, a chunk
    of ``batch_size`` prompts at a time (layers in ``pairing``'s source / target order)."""
    plans = plan_pairs(source, target, texts, data, max_pairs=max_pairs, seed=seed,
                       continuations=continuations)
    n_pairs = sum(len(p.source_positions) for p in plans)
    if n_pairs < 2:
        raise UnlockLensError(f"alignment data {data!r} gave {n_pairs} token pairs: pass more "
                              "alignment texts (or texts the two prompts share)")
    bar = tqdm(total=n_pairs, desc=f"alignment pairs ({data})", disable=not progress, unit="pair")
    for start in range(0, len(plans), batch_size):
        chunk = plans[start : start + batch_size]
        h_s = _states(source, [p.source_prompt for p in chunk], [p.source_positions for p in chunk],
                      pairing.source_layers, hook, final_layer)
        h_t = _states(target, [p.target_prompt for p in chunk], [p.target_positions for p in chunk],
                      pairing.target_layers, hook, final_layer)
        bar.update(h_s.shape[0])
        yield h_s, h_t
    bar.close()


def alignment_stats(
    source: Variant,
    target: Variant,
    texts: Sequence[str],
    pairing: LayerPairing,
    *,
    data: str = "tokens",
    max_pairs: int | None = None,
    seed: int = 0,
    hook: HookKind = "resid_post",
    final_layer: FinalLayer = "block",
    batch_size: int = 16,
    progress: bool = False,
    continuations: Sequence[str] | None = None,
) -> dict[int, GramStats]:
    """Per target layer of ``pairing``: the Gram statistics of (source layer s(t), target layer t)
    states over every planned pair, captured a chunk of ``batch_size`` prompts at a time
    (``continuations``: one per text, for the ``continuations`` kind; :func:`plan_pairs`)."""
    s_layers, t_layers = pairing.source_layers, pairing.target_layers
    d_s, d_t = int(source.model.cfg.d_model), int(target.model.cfg.d_model)
    stats = {t: GramStats.empty(d_s, d_t) for t in t_layers}
    for h_s, h_t in _pair_chunks(source, target, texts, pairing, data, max_pairs, seed, hook,
                                 final_layer, batch_size, progress, continuations):
        for j, t in enumerate(t_layers):
            stats[t].update(h_s[:, s_layers.index(pairing.source_of[t])], h_t[:, j])
    return stats


def alignment_rows(
    source: Variant,
    target: Variant,
    texts: Sequence[str],
    pairing: LayerPairing,
    *,
    data: str = "tokens",
    max_pairs: int | None = None,
    seed: int = 0,
    hook: HookKind = "resid_post",
    final_layer: FinalLayer = "block",
    batch_size: int = 16,
    progress: bool = False,
    continuations: Sequence[str] | None = None,
) -> tuple[Float[Tensor, "pairs Ls d_src"], Float[Tensor, "pairs Lt d_tgt"]]:
    """The same pairs as :func:`alignment_stats`, kept as dense rows (``fit_layer_maps`` input)
    for methods that have no fit from statistics; memory grows with the pairs (cap them)."""
    chunks = list(_pair_chunks(source, target, texts, pairing, data, max_pairs, seed, hook,
                               final_layer, batch_size, progress, continuations))
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


def _states(variant: Variant, prompts: list[str], positions: list[list[int]], layers: list[int],
            hook: HookKind, final_layer: FinalLayer) -> torch.Tensor:
    """[pairs, L, d] for one chunk, rows in the chunk's pair order."""
    rows: dict[int, torch.Tensor] = {}
    for idx, states in iter_capture_positions(
        variant.model, prompts, positions, layers, hook=hook, batch_size=len(prompts),
        special_tokens=variant.special_tokens, final_layer=final_layer,
    ):
        rows.update(zip(idx, states, strict=True))
    return torch.cat([rows[i] for i in range(len(prompts))])
