"""Ablation sweeps over where and how the transferred key is applied, on a cheap proxy.

Each cell steers the target on the direct prompts of the same evaluation questions and scores
its next-token distribution against the target's own CoT-prompted one:

- ``kl``: KL(target + CoT prompt || steered target + direct prompt), per question (lower =
  closer to the unlocked behaviour; 0 = identical);
- ``logp``: log of the probability the steered distribution puts on the unlocked behaviour's
  first tokens, the top-``m`` tokens under the CoT prompt (higher = closer).

Sweeps: one layer at a time, all layers but one, contiguous bands, rank (per alignment method),
alpha, alignment method. Every sweep adds a random-direction control per cell (the cell's key
replaced by :func:`unlock_lens.controls.random_like`: same per-layer norms, one run per seed)
and a ``direct`` row (unsteered).

What is cached (in :class:`AblationSetup`, built once by :func:`prepare_ablation`): source and
target activations for the alignment questions (one ``capture`` each), the CoT reference and
unsteered logits (one ``final_logits`` each), fitted maps per (method, rank) refitted from
the cached activations, and (built on first use) the unsteered KV cache of the direct prompts
minus their last token (:func:`~unlock_lens.diagnostics.cached_scoring.prefix_cache`). Each
cell has ``1 + len(seeds)`` steering configurations; when the position rule edits only the
last prompt position (``last_prompt``, ``final``) a sweep's configurations are scored on that
cache, many side by side per forward (the last prompt token only), and the vocabulary is read
out in chunks with no logits held (:func:`~unlock_lens.diagnostics.readout.readout_configurations`):
the same numbers as full steered prefills (1e-4, ``tests/test_ablations.py``). Other rules,
models without a Hugging Face KV cache and ``AblationSetup.cached = False`` run one full
steered prefill (``final_logits``) per configuration, with a one-line note.

Frame columns: ``sweep, cell, condition`` (``key`` / ``random`` / ``direct``), the cell's
parameters (``layers, layer, band_start, band_end, alpha, method, rank``), ``kl_mean, kl_std,
kl_sem, logp_mean, logp_std, logp_sem, n_questions, n_seeds`` and, for rank / method sweeps,
mean ``train_r2`` / ``heldout_r2`` over layers. For ``key`` and ``direct`` rows std / sem are
over questions; for ``random`` rows they are over the seeds' means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import Variant, capture_pair, check_layers, final_logits
from unlock_lens.align import ALIGNMENT_METHODS, LayerMap
from unlock_lens.align.base import _RANK_FREE
from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps, map_directions
from unlock_lens.controls import random_like
from unlock_lens.diagnostics.cached_scoring import (
    DEFAULT_MAX_ROWS,
    PrefixCache,
    edits_last_prompt_only,
    prefix_cache,
    score_configurations,
)
from unlock_lens.diagnostics.readout import STREAMED_PREFIX_BATCH, readout_configurations
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import MasterKey
from unlock_lens.prompts import PromptFormat
from unlock_lens.steer import Normalisation, Positions, Steering

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.5)
DEFAULT_SEEDS = (0, 1, 2)
#: float32 logits held at once when a sweep's configurations are scored on the prefix cache
LOGITS_BUDGET_BYTES = 512 * 2**20


# ---- pure scoring -------------------------------------------------------------------------


def unlocked_tokens(ref_logits: Float[Tensor, "n vocab"], m: int) -> Int[Tensor, "n m"]:
    """The top-``m`` next tokens of each question under the CoT (unlocked) prompt."""
    if not 1 <= m <= ref_logits.shape[-1]:
        raise UnlockLensError(f"top_m must be in [1, vocab={ref_logits.shape[-1]}], got {m}")
    return ref_logits.topk(m, dim=-1).indices


def proxy_scores(
    ref_logits: Float[Tensor, "n vocab"],
    logits: Float[Tensor, "n vocab"],
    tokens: Int[Tensor, "n m"],
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Per question: ``KL(ref || logits)`` and ``log sum_{j in tokens} p(j)`` under ``logits``."""
    _same_shape(ref_logits, logits)
    return _scores(torch.log_softmax(ref_logits.float(), -1), torch.log_softmax(logits.float(), -1),
                   tokens)


def _same_shape(ref_logits: Tensor, logits: Tensor) -> None:
    if ref_logits.shape != logits.shape:
        raise UnlockLensError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}")


def _scores(log_p: Tensor, log_q: Tensor, tokens: Tensor, p: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`proxy_scores` from log-probabilities (``p = log_p.exp()`` when already known)."""
    kl = ((log_p.exp() if p is None else p) * (log_p - log_q)).sum(-1)
    return kl, log_q.gather(-1, tokens).logsumexp(-1)


def _stats(prefix: str, values: Tensor) -> dict[str, float]:
    n = values.numel()
    std = float(values.std()) if n > 1 else 0.0
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": std,
            f"{prefix}_sem": std / math.sqrt(n)}


def _score_row(condition: str, kl: Tensor, logp: Tensor, n_questions: int, n_seeds: int) -> dict:
    return {"condition": condition, **_stats("kl", kl), **_stats("logp", logp),
            "n_questions": n_questions, "n_seeds": n_seeds}


# ---- the cache ----------------------------------------------------------------------------


@dataclass
class AblationSetup:
    """What every sweep cell reuses; build it with :func:`prepare_ablation` (or from tensors).

    ``H_src[:, j]`` holds source layer ``pairing.source_layers[j]``, ``H_tgt[:, j]`` target
    layer ``pairing.target_layers[j]``; ``matched[t]`` is the source layer read by target
    layer ``t``.
    ``ref_logits`` / ``direct_logits``: the target's next-token logits after the CoT /
    direct prompt of each evaluation question; ``direct_prompts`` are what gets steered.
    Fitted maps are memoised per (method, rank) on this object, and so is the direct
    prompts' prefix cache. ``cached = False`` scores every configuration with a full steered
    prefill instead (the reference the cached path is tested against).
    """

    key: MasterKey
    target: Any
    H_src: Float[Tensor, "n_align Ls d_s"]
    H_tgt: Float[Tensor, "n_align Lt d_t"]
    pairing: LayerPairing
    direct_prompts: list[str]
    ref_logits: Float[Tensor, "n vocab"]
    direct_logits: Float[Tensor, "n vocab"]
    spec: AlignSpec = AlignSpec(centered=False)  # noqa: RUF009 - frozen dataclass
    alpha: float = 0.1
    normalisation: Normalisation = "rotate"
    positions: Positions = "last_prompt"
    top_m: int = 5
    batch_size: int = 16
    cached: bool = True
    _maps: dict[tuple[str, int | None], dict[int, LayerMap]] = field(
        default_factory=dict, init=False, repr=False
    )
    _prefix: PrefixCache | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens = unlocked_tokens(self.ref_logits, self.top_m)
        # the reference's log-probabilities, once: every configuration is scored against them
        self._ref_log_p = torch.log_softmax(self.ref_logits.float(), -1)
        self._ref_p = self._ref_log_p.exp()
        self._ref_neg_entropy = (self._ref_p * self._ref_log_p).sum(-1)

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def centered(self) -> bool:
        return bool(self.spec.centered)

    @property
    def holdout(self) -> float:
        return self.spec.holdout

    @property
    def source_layers(self) -> list[int]:
        return self.pairing.source_layers

    @property
    def target_layers(self) -> list[int]:
        return self.pairing.target_layers

    @property
    def matched(self) -> dict[int, int]:
        return dict(self.pairing.source_of)

    @property
    def rank_limit(self) -> int:
        """Largest rank the rank-k methods accept: min(n_train, d_s, d_t)."""
        n = self.H_src.shape[0]
        n_train = n - max(1, round(self.holdout * n)) if self.holdout > 0 else n
        return min(n_train, self.H_src.shape[-1], self.H_tgt.shape[-1])

    def maps(self, method: str | None = None, rank: int | None = None) -> dict[int, LayerMap]:
        """One LayerMap per target layer, fitted from the cached activations (memoised)."""
        method = method or self.method
        rank = self.rank if rank is None else rank
        if method not in ALIGNMENT_METHODS:
            raise UnlockLensError(f"unknown alignment method {method!r}; known: {sorted(ALIGNMENT_METHODS)}")
        cache_key = (method, None if method in _RANK_FREE else rank)
        if cache_key not in self._maps:
            spec = replace(self.spec, method=method, rank=rank)
            self._maps[cache_key] = fit_layer_maps(self.H_src, self.H_tgt, self.pairing, spec)
        return self._maps[cache_key]

    def directions(self, method: str | None = None, rank: int | None = None) -> dict[int, Tensor]:
        """The key in the target's space, r^(t) = m^(s(t)) W_t, per target layer."""
        return map_directions(self.key, self.maps(method, rank))

    def steering(self, directions: dict[int, Tensor], layers: Sequence[int], alpha: float) -> Steering:
        """The configuration of a cell: the setup's edit, positions and hook kind."""
        return Steering(directions, alpha=alpha, normalisation=self.normalisation,
                        positions=self.positions, layers=list(layers), hook=self.key.hook)

    @property
    def uses_prefix_cache(self) -> bool:
        """Whether configurations are scored on the direct prompts' prefix cache."""
        return (self.cached and edits_last_prompt_only(self.positions)
                and getattr(self.target, "original_model", None) is not None)

    def prefix(self) -> PrefixCache:
        """The direct prompts' unsteered prefix cache (built once, on first use), in batches of
        at most :data:`~unlock_lens.diagnostics.readout.STREAMED_PREFIX_BATCH` prompts."""
        if self._prefix is None:
            self._prefix = prefix_cache(self.target, self.direct_prompts,
                                        batch_size=min(self.batch_size, STREAMED_PREFIX_BATCH))
        return self._prefix

    def logits_of(self, steerings: Sequence[Steering]) -> Iterator[Float[Tensor, "n vocab"]]:
        """Each configuration's next-token logits over the direct prompts, in order: many per
        forward on the prefix cache when it applies (chunks bounded by ``LOGITS_BUDGET_BYTES``), else
        one full steered prefill each."""
        if not self.uses_prefix_cache:
            if steerings:
                warnings.warn(_full_prefill_note(self), stacklevel=3)
            for s in steerings:
                yield final_logits(self.target, self.direct_prompts, batch_size=self.batch_size,
                                   steering=s)
            return
        n, vocab = self.direct_logits.shape
        rows = min(n, self.batch_size)
        chunk = max(1, min(DEFAULT_MAX_ROWS // rows, LOGITS_BUDGET_BYTES // (4 * n * vocab)))
        for start in range(0, len(steerings), chunk):
            yield from score_configurations(self.target, self.prefix(), steerings[start : start + chunk])

    def steered_logits(
        self, directions: dict[int, Tensor], layers: Sequence[int], alpha: float
    ) -> Float[Tensor, "n vocab"]:
        """The direct prompts' next-token logits under one configuration (see :meth:`logits_of`)."""
        return next(self.logits_of([self.steering(directions, layers, alpha)]))

    def scores_of(self, steerings: Sequence[Steering]) -> Iterator[tuple[Tensor, Tensor]]:
        """Each configuration's :meth:`score` (KL to the reference, log p of its top tokens), in
        order. On the prefix cache the vocabulary is read out in chunks and no logits are held
        (:func:`~unlock_lens.diagnostics.readout.readout_configurations`), else one full steered
        prefill each, scored by :meth:`score`."""
        if not self.uses_prefix_cache:
            for logits in self.logits_of(steerings):
                yield self.score(logits)
            return
        for stats in readout_configurations(self.target, self.prefix(), steerings, self._ref_p, self.tokens,
                                            with_entropy=False):
            yield stats.kl(self._ref_neg_entropy), stats.log_q().logsumexp(-1)

    def score(self, logits: Float[Tensor, "n vocab"]) -> tuple[Tensor, Tensor]:
        """:func:`proxy_scores` against the setup's reference (its log-probabilities cached)."""
        _same_shape(self.ref_logits, logits)
        return _scores(self._ref_log_p, torch.log_softmax(logits.float(), -1), self.tokens, self._ref_p)


def prepare_ablation(
    key: MasterKey,
    source: Variant,
    target: Variant,
    align_questions: Sequence[str],
    eval_questions: Sequence[str],
    *,
    unlocked_format: PromptFormat | None = None,
    target_layers: Sequence[int] | None = None,
    spec: AlignSpec = AlignSpec(),  # noqa: B008 - frozen dataclass
    alpha: float = 0.1,
    normalisation: Normalisation = "rotate",
    positions: Positions = "last_prompt",
    top_m: int = 5,
    batch_size: int = 16,
) -> AblationSetup:
    """Run every cacheable forward pass once: 2 captures + 2 ``final_logits`` calls.

    ``source``: the source-locked variant (the key's model, locked format); ``target``: the
    target in its locked format. ``unlocked_format`` (the target's CoT prompt) defaults to
    the CoT version of the target's format. ``centered`` defaults to the authors' choice
    (centred for a PCA key). ``method`` / ``rank`` / ``alpha`` are the defaults the sweeps
    hold fixed while varying something else.
    """
    key.check_model(source.model)
    if len(eval_questions) == 0:
        raise UnlockLensError("the evaluation question list is empty")
    t_layers = check_layers(target.model, target_layers)
    pairing = LayerPairing.by_depth(key.source.n_layers, int(target.model.cfg.n_layers), t_layers)
    pairing.require_source(key.layers)
    H_src, H_tgt = capture_pair(source, target, align_questions, pairing.source_layers,
                                pairing.target_layers, hook=key.hook, batch_size=batch_size)
    unlocked = unlocked_format or target.format.cot_counterpart()
    tok = target.model.tokenizer
    direct_prompts = target.prompts(eval_questions)
    ref = final_logits(target.model, unlocked.render_all(eval_questions, tok), batch_size=batch_size)
    direct = final_logits(target.model, direct_prompts, batch_size=batch_size)
    return AblationSetup(
        key=key, target=target.model, H_src=H_src, H_tgt=H_tgt, pairing=pairing,
        direct_prompts=direct_prompts, ref_logits=ref, direct_logits=direct, spec=spec.for_key(key),
        alpha=alpha, normalisation=normalisation, positions=positions, top_m=top_m,
        batch_size=batch_size,
    )


# ---- running cells ------------------------------------------------------------------------


@dataclass
class _Cell:
    params: dict[str, Any]
    directions: dict[int, Tensor]
    layers: list[int]
    alpha: float


def _layers_label(layers: Sequence[int]) -> str:
    return ",".join(str(x) for x in layers)


def _fit_metrics(maps: dict[int, LayerMap]) -> dict[str, float]:
    out = {}
    for name in ("train_r2", "heldout_r2"):
        vals = [m.metrics.get(name, math.nan) for m in maps.values()]
        out[name] = sum(vals) / len(vals) if vals else math.nan
    return out


def _run_cells(
    setup: AblationSetup, sweep: str, cells: list[_Cell], seeds: Sequence[int], *,
    with_direct: bool = True, progress: bool = False,
) -> pd.DataFrame:
    if not cells:
        raise UnlockLensError(f"the {sweep} sweep has no cells")
    n = len(setup.direct_prompts)
    # per cell: the key, then one random control per seed (all scored in one stream)
    steerings = [setup.steering(d, cell.layers, cell.alpha) for cell in cells
                 for d in [cell.directions, *(random_like(cell.directions, s) for s in seeds)]]
    bar = tqdm(total=len(steerings), desc=f"{sweep} sweep (steered configurations)",
               disable=not progress)
    scores = []
    for kl_logp in setup.scores_of(steerings):
        scores.append(kl_logp)
        bar.update()
    bar.close()
    rows = []
    per_cell = 1 + len(seeds)
    for i, cell in enumerate(cells):
        base = {"sweep": sweep, "cell": i, "layers": _layers_label(cell.layers),
                "alpha": cell.alpha, **cell.params}
        (kl, logp), *controls = scores[i * per_cell : (i + 1) * per_cell]
        rows.append({**base, **_score_row("key", kl, logp, n, 0)})
        if seeds:
            kl_s = torch.stack([k.mean() for k, _ in controls])
            logp_s = torch.stack([lp.mean() for _, lp in controls])
            rows.append({**base, **_score_row("random", kl_s, logp_s, n, len(seeds))})
    frame = pd.DataFrame(rows)
    if with_direct:
        frame = pd.concat([frame, _direct_row(setup, sweep)], ignore_index=True)
    front = ["sweep", "cell", "condition", "layers", "layer", "band_start", "band_end", "alpha",
             "method", "rank"]
    cols = [c for c in front if c in frame.columns]
    return frame[cols + [c for c in frame.columns if c not in cols]]


def _full_prefill_note(setup: AblationSetup) -> str:
    if not setup.cached:
        why = "cached=False"
    elif not edits_last_prompt_only(setup.positions):
        why = f"positions={setup.positions!r} also edits the prompt before its last token"
    else:
        why = "the target has no Hugging Face KV cache"
    return f"{why}: scoring with one full steered prefill per configuration (slower, same logits)"


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise UnlockLensError(f"seeds repeat: {seeds}")
    return seeds


def _base(setup: AblationSetup, alpha: float | None) -> tuple[dict[int, Tensor], float, dict]:
    alpha = setup.alpha if alpha is None else alpha
    return setup.directions(), alpha, {"method": setup.method, "rank": setup.rank}


def single_layer_sweep(
    setup: AblationSetup, *, layers: Sequence[int] | None = None, alpha: float | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = False,
) -> pd.DataFrame:
    """Steer one target layer at a time (column ``layer``)."""
    dirs, alpha, params = _base(setup, alpha)
    cells = [_Cell({**params, "layer": t}, dirs, [t], alpha)
             for t in (setup.target_layers if layers is None else layers)]
    return _run_cells(setup, "single_layer", cells, _check_seeds(seeds), progress=progress)


def leave_one_out_sweep(
    setup: AblationSetup, *, alpha: float | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: bool = False,
) -> pd.DataFrame:
    """Steer every target layer but one (column ``layer`` = the one left out)."""
    if len(setup.target_layers) < 2:
        raise UnlockLensError("leave-one-out needs at least 2 target layers")
    dirs, alpha, params = _base(setup, alpha)
    cells = [_Cell({**params, "layer": t}, dirs, [u for u in setup.target_layers if u != t], alpha)
             for t in setup.target_layers]
    return _run_cells(setup, "leave_one_out", cells, _check_seeds(seeds), progress=progress)


def band_sweep(
    setup: AblationSetup, *, width: int = 3, stride: int = 1, alpha: float | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = False,
) -> pd.DataFrame:
    """Steer contiguous bands of ``width`` target layers, starting every ``stride`` layers.

    Columns ``band_start`` / ``band_end`` (inclusive) and ``layer`` (the band's centre).
    """
    t = setup.target_layers
    if not 1 <= width <= len(t) or stride < 1:
        raise UnlockLensError(f"need 1 <= width <= {len(t)} and stride >= 1, got {width}, {stride}")
    dirs, alpha, params = _base(setup, alpha)
    cells = []
    for start in range(0, len(t) - width + 1, stride):
        band = t[start : start + width]
        cells.append(_Cell({**params, "band_start": band[0], "band_end": band[-1],
                            "layer": (band[0] + band[-1]) / 2}, dirs, band, alpha))
    return _run_cells(setup, "band", cells, _check_seeds(seeds), progress=progress)


def alpha_sweep(
    setup: AblationSetup, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
    seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = False,
) -> pd.DataFrame:
    """Steer all target layers at each alpha (same maps and directions throughout)."""
    dirs = setup.directions()
    params = {"method": setup.method, "rank": setup.rank}
    cells = [_Cell(dict(params), dirs, list(setup.target_layers), float(a)) for a in alphas]
    return _run_cells(setup, "alpha", cells, _check_seeds(seeds), progress=progress)


def _method_cell(setup: AblationSetup, method: str, rank: int, alpha: float) -> _Cell:
    maps = setup.maps(method, rank)
    eff_rank = rank if method not in _RANK_FREE else next(iter(maps.values())).rank
    return _Cell({"method": method, "rank": eff_rank, **_fit_metrics(maps)},
                 setup.directions(method, rank), list(setup.target_layers), alpha)


def rank_sweep(
    setup: AblationSetup, *, ranks: Sequence[int] = DEFAULT_RANKS, methods: Sequence[str] = ("svd",),
    alpha: float | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: bool = False,
) -> pd.DataFrame:
    """Refit the maps at each rank (capped at :attr:`AblationSetup.rank_limit`) per method.

    Ranks above the cap are dropped (the cap itself is added if any were). Methods that
    ignore rank (``ridge``, ``identity``) are fitted and run once; their row is repeated at
    every rank (a flat line), with ``rank`` still naming the sweep's rank.
    """
    alpha = setup.alpha if alpha is None else alpha
    cap = setup.rank_limit
    kept = sorted({min(int(r), cap) for r in ranks if int(r) >= 1})
    if not kept:
        raise UnlockLensError(f"no valid rank in {list(ranks)}")
    seeds = _check_seeds(seeds)
    frames = []
    for method in methods:
        if method in _RANK_FREE:
            cell = _method_cell(setup, method, kept[0], alpha)
            once = _run_cells(setup, "rank", [cell], seeds, with_direct=False, progress=progress)
            frames += [once.assign(rank=r) for r in kept]
        else:
            cells = [_method_cell(setup, method, r, alpha) for r in kept]
            frames.append(_run_cells(setup, "rank", cells, seeds, with_direct=False, progress=progress))
    frame = pd.concat(frames, ignore_index=True)
    frame["cell"] = frame.groupby(["method", "rank"], sort=False).ngroup()
    return pd.concat([frame, _direct_row(setup, "rank")], ignore_index=True)


def _direct_row(setup: AblationSetup, sweep: str) -> pd.DataFrame:
    kl, logp = setup.score(setup.direct_logits)
    n = len(setup.direct_prompts)
    return pd.DataFrame([{"sweep": sweep, "cell": -1, "layers": "",
                          **_score_row("direct", kl, logp, n, 0)}])


def method_sweep(
    setup: AblationSetup, *, methods: Sequence[str] | None = None, rank: int | None = None,
    alpha: float | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = False,
) -> pd.DataFrame:
    """Compare alignment methods at one rank (default: ``svd``, ``procrustes``, ``cca``,
    ``ridge``, plus ``identity`` when source and target widths agree)."""
    if methods is None:
        methods = ["svd", "procrustes", "cca", "ridge"]
        if setup.H_src.shape[-1] == setup.H_tgt.shape[-1]:
            methods.append("identity")
    rank = min(setup.rank if rank is None else rank, setup.rank_limit)
    alpha = setup.alpha if alpha is None else alpha
    cells = [_method_cell(setup, m, rank, alpha) for m in methods]
    return _run_cells(setup, "method", cells, _check_seeds(seeds), progress=progress)
