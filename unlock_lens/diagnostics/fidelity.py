"""Transfer fidelity: does the transferred key make the target write what its own key does?

Apart from whether the native key unlocks anything, a faithful transfer reproduces the native
key's effect. Two measures:

- text: the share of identical greedy outputs and per-token agreement (:func:`transfer_fidelity`);
- likelihood (:func:`likelihood_fidelity`), which needs no heuristic and which a degenerate
  change cannot game: the teacher-forced log-likelihood LL of a *reference behaviour* (the
  target's greedy continuations under its own key, or under the capability prompt) under each
  condition, and the fidelity ratio

      F = (LL_transferred - LL_unsteered) / (LL_native - LL_unsteered)

  pooled over problems, with a paired bootstrap interval, and the key's rank among a
  population of null directions (random source directions through the same maps, structured
  nulls): a permutation p-value whose unit is the direction.

>>> ref = greedy_reference(target, locked_prompts, name="native", steering=native)  # doctest: +SKIP
>>> report = likelihood_fidelity(target, ref, native=native, candidates={"transferred": steered},
...                              nulls=null_steerings)  # doctest: +SKIP
>>> report.summary()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import final_logits
from unlock_lens.controls import random_mapped
from unlock_lens.diagnostics.cached_scoring import (
    check_cacheable,
    continuation_loglik,
    prefix_cache,
)
from unlock_lens.distributions import kl_divergence
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import generate
from unlock_lens.prompts import SpecialTokens


def token_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of positions where two token sequences agree, over the longer one (1 if both empty).

    >>> token_agreement([1, 2, 3, 4], [1, 2, 9])
    0.5
    """
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b, strict=False)) / longest


def transfer_fidelity(outputs: Sequence[str], reference: Sequence[str], tokenizer: Any) -> dict[str, float]:
    """Per problem, ``outputs[i]`` against ``reference[i]`` (e.g. transferred key vs native key at
    the same alpha): the share of identical outputs and the mean per-token agreement."""
    if len(outputs) != len(reference) or not outputs:
        raise UnlockLensError(f"fidelity compares outputs problem by problem: got {len(outputs)} and "
                              f"{len(reference)} outputs; pass two non-empty lists of the same problems")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    agree = [token_agreement(ids(a), ids(b)) for a, b in zip(outputs, reference, strict=True)]
    return {
        "identical_rate": sum(a == b for a, b in zip(outputs, reference, strict=True)) / len(outputs),
        "token_agreement": sum(agree) / len(agree),
    }


# ---------------------------------------------------------------------------------------------
# likelihood fidelity: how much of the native key's effect on the likelihood of its own
# behaviour a transferred key reproduces, against a population of null directions


@dataclass(frozen=True)
class Reference:
    """A behaviour to score: ``tokens[i]`` is a continuation of ``prompts[i]`` (token ids of the
    scored model), e.g. the target's greedy output under its own key (``name="native"``) or
    under the capability prompt (``name="unlocked-prompt"``, generated from another prompt and
    scored after the locked one)."""

    name: str
    prompts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.tokens) or not self.prompts:
            raise UnlockLensError(
                f"reference {self.name!r} has {len(self.prompts)} prompts and {len(self.tokens)} "
                "continuations: pass one continuation per prompt, at least one")

    @property
    def n_tokens(self) -> Int[Tensor, " n"]:
        return torch.tensor([len(t) for t in self.tokens])


def greedy_reference(
    model: Any,
    prompts: Sequence[str],
    *,
    name: str,
    steering: Any = None,
    generate_from: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    stop_strings: Sequence[str] = (),
    batch_size: int = 16,
    special_tokens: SpecialTokens = "model",
) -> Reference:
    """The model's greedy continuations, as a :class:`Reference` scored after ``prompts``.

    ``steering``: the behaviour's own steering (the target's native key); ``generate_from``:
    prompts to generate from instead (the capability prompt, one per entry of ``prompts``),
    whose continuations are then scored after the locked ``prompts``. ``stop_strings`` cut a
    continuation as generation does (the kept tokens are the exact ids generated); with none,
    the raw ``max_new_tokens`` greedy tokens. A continuation that came out empty is dropped
    with its prompt (it has no likelihood to compare); ``indices`` records the prompts kept.
    """
    sources = list(prompts if generate_from is None else generate_from)
    if len(sources) != len(prompts):
        raise UnlockLensError(f"generate_from has {len(sources)} prompts for {len(prompts)} "
                              "scored prompts: pass one per prompt")
    gens = generate(model, sources, steering=steering, max_new_tokens=max_new_tokens,
                    stop_strings=stop_strings, batch_size=batch_size, special_tokens=special_tokens)
    kept = [i for i, g in enumerate(gens) if g.tokens]
    if not kept:
        raise UnlockLensError(f"every {name!r} continuation is empty: nothing to score (raise "
                              "max_new_tokens or check the stop strings)")
    return Reference(name, tuple(prompts[i] for i in kept), tuple(gens[i].tokens for i in kept),
                     tuple(gens[i].text for i in kept), tuple(kept))


def random_mapped_nulls(key: Any, maps: Mapping[int, Any], n: int, *, seed: int = 0) -> list[dict[int, Tensor]]:
    """``n`` random-mapped null directions: isotropic random source directions with the key's
    per-layer norms (seeds ``seed .. seed + n - 1``), carried through the same maps."""
    if n < 1:
        raise UnlockLensError(f"need at least one null direction, got n={n}")
    return [random_mapped(key, maps, seed + i) for i in range(n)]


def half_split_direction(
    states: Float[Tensor, "n layers d"], norms: Float[Tensor, " layers"], *, seed: int = 0
) -> Float[Tensor, "layers d"]:
    """A structured null: the mean difference of two random halves of one variant's states
    (the same prompt format on both sides, so no capability differs), per layer, scaled to
    ``norms`` (the key's per-layer norms)."""
    n = states.shape[0]
    if n < 2:
        raise UnlockLensError(f"a half split needs at least 2 prompts' states, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    half = n // 2
    diff = states[perm[:half]].float().mean(0) - states[perm[half: 2 * half]].float().mean(0)
    return diff * (norms.float() / diff.norm(dim=-1).clamp_min(1e-12)).unsqueeze(-1)


def direction_rank(statistic: float, nulls: Sequence[float]) -> tuple[int, float]:
    """Rank of a direction's statistic among null directions' (1 = above every null) and the
    one-sided permutation p-value ``(1 + #{null >= statistic}) / (1 + n_nulls)``: the unit of
    this test is the direction, not the problem."""
    null = np.asarray(nulls, dtype=float)
    if null.size == 0:
        raise UnlockLensError("direction_rank needs at least one null statistic")
    return 1 + int((null > statistic).sum()), float((1 + (null >= statistic).sum()) / (1 + null.size))


def fidelity_ratio(gain: Float[Tensor, " n"], native_gain: Float[Tensor, " n"]) -> float:
    """Pooled F = sum(LL_cond - LL_unsteered) / sum(LL_native - LL_unsteered) over problems."""
    den = float(native_gain.double().sum())
    return float(gain.double().sum()) / den if den != 0 else float("nan")


def bootstrap_ratio(
    gain: Float[Tensor, " n"], native_gain: Float[Tensor, " n"], *, n_boot: int = 2000,
    seed: int = 0, confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the pooled F under a paired bootstrap over problems."""
    a, b = gain.double().numpy(), native_gain.double().numpy()
    idx = np.random.default_rng(int(seed)).integers(0, a.size, size=(n_boot, a.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = a[idx].sum(1) / b[idx].sum(1)
    tail = (1 - confidence) / 2
    lo, hi = np.nanquantile(boots, [tail, 1 - tail])
    return float(lo), float(hi)


#: the kinds of condition a fidelity report holds
KINDS = ("unsteered", "native", "candidate", "null")


@dataclass
class FidelityReport:
    """Per-problem summed log-likelihoods of one reference under every condition.

    ``loglik[name]``: Float[n] (nats, summed over the continuation's tokens); ``kind[name]``:
    one of :data:`KINDS`. :meth:`summary` gives F, its interval and the rank among nulls.
    """

    reference: Reference
    loglik: dict[str, Tensor]
    kind: dict[str, str]
    first_token_kl: dict[str, Tensor] = field(default_factory=dict)

    @property
    def nulls(self) -> list[str]:
        return [c for c, k in self.kind.items() if k == "null"]

    def gain(self, name: str) -> Float[Tensor, " n"]:
        """Per-problem LL_name - LL_unsteered (nats)."""
        return self.loglik[name] - self.loglik["unsteered"]

    def summary(self, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> Any:
        """One row per condition: gain per token, pooled F with a paired-bootstrap interval over
        problems, and the rank / p among the null directions by mean gain (F's order, the
        native key raising its own continuations' likelihood) (each null's own row, then their
        quantiles as rows ``nulls q0.5``, ``nulls q0.95``, ``nulls q1``);
        with a first-token reference also the mean first-token KL to it and its rank / p among
        the nulls (lower is closer)."""
        import pandas as pd

        native = self.gain("native")
        tokens = float(self.reference.n_tokens.sum())
        null_stats = [float(self.gain(c).mean()) for c in self.nulls]
        null_f = np.array([fidelity_ratio(self.gain(c), native) for c in self.nulls])
        rows = []
        for name, kind in self.kind.items():
            if kind == "null":
                continue
            g = self.gain(name)
            lo, hi = bootstrap_ratio(g, native, n_boot=n_boot, seed=seed, confidence=confidence)
            rank, p = direction_rank(float(g.mean()), null_stats) if null_stats else (0, float("nan"))
            row = {"reference": self.reference.name, "condition": name, "kind": kind,
                   "gain_per_token": float(g.sum()) / tokens, "F": fidelity_ratio(g, native),
                   "F_lo": lo, "F_hi": hi, "rank": rank, "n_nulls": len(null_stats), "p": p}
            if self.first_token_kl:
                kl = float(self.first_token_kl[name].mean())
                null_kl = [-float(self.first_token_kl[c].mean()) for c in self.nulls]
                kl_rank, kl_p = direction_rank(-kl, null_kl) if null_kl else (0, float("nan"))
                row.update({"first_token_kl": kl, "kl_rank": kl_rank, "kl_p": kl_p})
            rows.append(row)
        for name in self.nulls:  # each null direction, so a reader can recompute every rank
            row = {"reference": self.reference.name, "condition": name, "kind": "null",
                   "gain_per_token": float(self.gain(name).sum()) / tokens,
                   "F": fidelity_ratio(self.gain(name), native), "n_nulls": len(null_stats)}
            if self.first_token_kl:
                row["first_token_kl"] = float(self.first_token_kl[name].mean())
            rows.append(row)
        if len(null_f):
            null_kl = np.array([float(self.first_token_kl[c].mean()) for c in self.nulls]
                               if self.first_token_kl else [np.nan])
            for q in (0.5, 0.95, 1.0):
                rows.append({"reference": self.reference.name, "condition": f"nulls q{q:g}",
                             "kind": "null", "F": float(np.quantile(null_f, q)),
                             "first_token_kl": float(np.quantile(null_kl, 1 - q)),
                             "n_nulls": len(null_f)})
        return pd.DataFrame(rows)


def likelihood_fidelity(
    model: Any,
    reference: Reference,
    *,
    native: Any,
    candidates: Mapping[str, Any],
    nulls: Sequence[Any] | Mapping[str, Any] = (),
    first_token_reference: Float[Tensor, "n vocab"] | None = None,
    batch_size: int = 16,
    configs_per_pass: int = 8,
    special_tokens: SpecialTokens = "model",
    progress: bool | str = True,
) -> FidelityReport:
    """Score ``reference`` under every condition on one shared prefix KV cache.

    ``native``: the target's own key (a Steering; its gain is F's denominator);
    ``candidates``: name -> Steering (transferred keys, the negated key, ...); ``nulls``:
    Steerings of null directions (>= 30 where cheap), the population a candidate is ranked
    in. Every Steering must edit the last prompt position only (``positions="last_prompt"``):
    the conditions then run ``configs_per_pass`` at a time side by side on one shared prefix
    KV cache (:func:`~unlock_lens.diagnostics.cached_scoring.continuation_loglik`).
    ``first_token_reference``: next-token logits of the capability reference (e.g. the
    capability prompt's) for each reference prompt; each condition's first-token KL to it
    comes from the same forwards.
    """
    if configs_per_pass < 1:
        raise UnlockLensError(f"configs_per_pass must be >= 1, got {configs_per_pass}")
    if isinstance(nulls, Mapping):
        null_items = dict(nulls)
    else:
        null_items = {f"null {i}": s for i, s in enumerate(nulls)}
    clash = set(candidates) & ({"unsteered", "native"} | set(null_items))
    if clash:
        raise UnlockLensError(f"condition names {sorted(clash)} are taken: rename the candidates")
    conditions: dict[str, tuple[str, Any]] = {"unsteered": ("unsteered", None), "native": ("native", native)}
    conditions.update({n: ("candidate", s) for n, s in candidates.items()})
    conditions.update({n: ("null", s) for n, s in null_items.items()})
    for name, (_, steering) in conditions.items():
        if steering is not None:
            try:
                check_cacheable(steering)
            except UnlockLensError as err:
                raise UnlockLensError(f"condition {name!r}: {err}") from None
    cache = prefix_cache(model, list(reference.prompts), special_tokens=special_tokens,
                         batch_size=batch_size)
    desc = progress if isinstance(progress, str) else f"fidelity ({reference.name})"
    if first_token_reference is not None and first_token_reference.shape[0] != len(reference.prompts):
        raise UnlockLensError(f"first_token_reference has {first_token_reference.shape[0]} rows for "
                              f"{len(reference.prompts)} reference prompts: pass one per prompt")
    names = list(conditions)
    loglik, kind, kl = {}, {name: conditions[name][0] for name in names}, {}
    with tqdm(total=len(names), desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(names), configs_per_pass):
            chunk = names[start : start + configs_per_pass]
            ll, first = continuation_loglik(model, cache, reference.tokens,
                                            [conditions[n][1] for n in chunk])
            for c, name in enumerate(chunk):
                loglik[name] = ll[c]
                if first_token_reference is not None:
                    kl[name] = kl_divergence(first_token_reference, first[c])
            bar.update(len(chunk))
    return FidelityReport(reference, loglik, kind, kl)


def pack_fidelity(
    target: Any,
    pack: Any,
    native_directions: Mapping[int, Tensor] | Float[Tensor, "layers d"],
    locked_prompts: Sequence[str],
    *,
    alpha: float,
    unlocked_prompts: Sequence[str] | None = None,
    references: Sequence[str] = ("native", "unlocked-prompt"),
    n_nulls: int = 30,
    seed: int = 0,
    extra_nulls: Mapping[str, Mapping[int, Tensor]] | None = None,
    extra_candidates: Mapping[str, Mapping[int, Tensor]] | None = None,
    native_reference: Reference | None = None,
    max_new_tokens: int = 32,
    stop_strings: Sequence[str] = (),
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, FidelityReport]:
    """The likelihood fidelity test of a capability pack at one alpha, per reference.

    References: ``native`` (the target's greedy continuations of ``locked_prompts`` under its
    own key, ``native_directions``) and, given ``unlocked_prompts`` (the same questions in the
    capability prompt), ``unlocked-prompt`` (its continuations there, scored after the locked
    prompts); the unlocked prompts' next-token logits are also every condition's first-token
    reference. Candidates: the transferred key and its negation (alpha -> -alpha). Nulls:
    ``n_nulls`` random-mapped directions (seeds ``seed..``) and ``extra_nulls`` (structured
    nulls already in the target's space, e.g. a half split or a paraphrased-template contrast
    through the same maps). ``extra_candidates``: more directions in the target's space, scored
    and ranked like the transferred key but not in the null population (e.g. random target
    directions, the native key's own null). ``native_reference``: the native key's greedy
    continuations of ``locked_prompts`` already generated (:func:`greedy_reference` with this
    alpha), used instead of generating them again. Every steering uses the pack's
    normalisation and positions.
    """
    unknown = sorted(set(references) - {"native", "unlocked-prompt"})
    if unknown or not references:
        raise UnlockLensError(f"references {unknown or list(references)}: choose from 'native', 'unlocked-prompt'")
    if "unlocked-prompt" in references and unlocked_prompts is None:
        raise UnlockLensError("the unlocked-prompt reference needs unlocked_prompts (the capability prompts)")
    steered = pack.steering(alpha)

    native = steered.like(native_directions)
    candidates = {"transferred": steered, "-transferred": steered.like(steered.directions, -alpha)}
    candidates.update({name: steered.like(d) for name, d in (extra_candidates or {}).items()})
    nulls = {f"random-mapped {seed + i}": steered.like(d)
             for i, d in enumerate(random_mapped_nulls(pack.key, pack.maps, n_nulls, seed=seed))}
    nulls.update({name: steered.like(d) for name, d in (extra_nulls or {}).items()})
    decoding = dict(max_new_tokens=max_new_tokens, stop_strings=stop_strings, batch_size=batch_size)
    refs = []
    if "native" in references and native_reference is not None:
        if not set(native_reference.prompts) <= set(locked_prompts):
            raise UnlockLensError("native_reference continues other prompts than locked_prompts: "
                                  "build it with greedy_reference on the same locked prompts")
        refs.append(native_reference)
    elif "native" in references:
        refs.append(greedy_reference(target, locked_prompts, name="native", steering=native, **decoding))
    if "unlocked-prompt" in references:
        refs.append(greedy_reference(target, locked_prompts, name="unlocked-prompt",
                                     generate_from=unlocked_prompts, **decoding))
    first_ref = (None if unlocked_prompts is None
                 else final_logits(target, list(unlocked_prompts), batch_size=batch_size))
    return {ref.name: likelihood_fidelity(
        target, ref, native=native, candidates=candidates, nulls=nulls, batch_size=batch_size,
        first_token_reference=None if first_ref is None else first_ref[list(ref.indices)],
        progress=f"alpha {alpha:g}, {ref.name} reference" if progress else False) for ref in refs}


def verdict(summary: Any, *, alpha: float, level: float = 0.05,
            nulls: str = "random-mapped directions") -> str:
    """One sentence a reader can check: the transferred key's F and first-token KL against the
    null directions (rank as "above k of N", direction-level p), the native key beside it, and
    the decision by the rule fixed here: the key carries the behaviour when its F is above the
    nulls at p <= ``level``."""
    rows = summary.set_index("condition")
    key, native = rows.loc["transferred"], rows.loc["native"]
    n = int(key["n_nulls"])

    def beaten(p: float) -> int:  # nulls strictly below the key: n + 1 - (1 + #null >= key)
        return int(round(n + 1 - p * (n + 1)))

    text = (f"alpha {alpha:g}: transferred key F = {key['F']:.2f} [{key['F_lo']:.2f}, {key['F_hi']:.2f}], "
            f"above {beaten(key['p'])} of {n} {nulls} (p = {key['p']:.3f})")
    if "first_token_kl" in rows.columns and key["first_token_kl"] == key["first_token_kl"]:
        text += (f"; first-token KL to the capability prompt {key['first_token_kl']:.3f}, closer than "
                 f"{beaten(key['kl_p'])} of {n} (p = {key['kl_p']:.3f}); native key KL "
                 f"{native['first_token_kl']:.3f}, closer than {beaten(native['kl_p'])} of {n}")
    decision = ("carries the native key's behaviour beyond the null directions" if key["p"] <= level
                else "not distinguishable from the null directions")
    return f"{text}. Verdict: {decision} (rule: p <= {level:g} on F)."


def fidelity_by_alpha(
    target: Any,
    pack: Any,
    native_directions: Mapping[int, Tensor] | Float[Tensor, "layers d"],
    locked_prompts: Sequence[str],
    unlocked_prompts: Sequence[str],
    alphas: Sequence[float],
    **kwargs: Any,
) -> tuple[Any, list[str]]:
    """:func:`pack_fidelity` with the native-key reference at each alpha: every alpha's summary
    rows in one table (column ``alpha``), and one :func:`verdict` sentence per alpha.
    ``kwargs`` go to :func:`pack_fidelity` (``n_nulls``, ``max_new_tokens``, ...)."""
    import pandas as pd

    if not alphas:
        raise UnlockLensError("no alphas given: pass at least one steering strength")
    tables, lines = [], []
    for alpha in alphas:
        report = pack_fidelity(target, pack, native_directions, locked_prompts, alpha=alpha,
                               unlocked_prompts=unlocked_prompts, references=("native",), **kwargs)
        summary = report["native"].summary()
        tables.append(summary.assign(alpha=alpha))
        lines.append(verdict(summary, alpha=alpha))
    return pd.concat(tables, ignore_index=True), lines
