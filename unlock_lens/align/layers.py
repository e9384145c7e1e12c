"""The transfer step on tensors: pair layers by depth, fit one map per pair, map a key.

    pairing = LayerPairing.by_depth(n_src, n_tgt)                  # target layer -> source layer
    maps = fit_layer_maps(H_src, H_tgt, pairing, AlignSpec("svd", rank=16))
    directions = map_directions(key, maps)                         # r^(t) = m^(s(t)) W_t

Everything here is a pure function of tensors: captures, cached or altered activations
(shuffled pairs, other alignment data) all go through the same three calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import LayerMap, fit_alignment
from unlock_lens.align.stats import GramStats, fit_from_stats
from unlock_lens.errors import UnlockLensError


def depth_match(n_src: int, n_tgt: int) -> list[int]:
    """Source layer paired with each target layer by relative depth (UNLOCK authors' rule).

    Target layer ``t`` maps to ``min(floor((n_src - 1) * t / (n_tgt - 1)), n_src - 1)``; a
    one-layer target maps to ``[0]``. First maps to first, last to last, monotone.

    >>> depth_match(30, 18)[:6], depth_match(30, 18)[-1]
    ([0, 1, 3, 5, 6, 8], 29)
    >>> depth_match(3, 5)
    [0, 0, 1, 1, 2]
    """
    for label, value in (("n_src", n_src), ("n_tgt", n_tgt)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnlockLensError(f"depth_match: {label} must be an int >= 1, got {value!r}")
    if n_tgt == 1:
        return [0]
    return [min((n_src - 1) * t // (n_tgt - 1), n_src - 1) for t in range(n_tgt)]


@dataclass(frozen=True)
class LayerPairing:
    """Which source layer each (used) target layer reads: ``source_of[t] = s``."""

    source_of: Mapping[int, int]

    @classmethod
    def by_depth(cls, n_src: int, n_tgt: int, target_layers: Sequence[int] | None = None) -> LayerPairing:
        """:func:`depth_match` restricted to ``target_layers`` (default: all)."""
        matched = depth_match(n_src, n_tgt)
        layers = range(n_tgt) if target_layers is None else target_layers
        return cls({int(t): matched[t] for t in sorted(layers)})

    @property
    def target_layers(self) -> list[int]:
        return sorted(self.source_of)

    @property
    def source_layers(self) -> list[int]:
        """The distinct source layers needed, sorted (the column order ``fit_layer_maps`` expects)."""
        return sorted(set(self.source_of.values()))

    def require_source(self, available: Sequence[int]) -> None:
        """Refuse a pairing that needs source layers the key or capture does not cover."""
        missing = [s for s in self.source_layers if s not in available]
        if missing:
            raise UnlockLensError(
                f"target layers need source layers {missing}, which the key does not cover "
                f"(it has {list(available)}); extract the key at all layers"
            )


@dataclass(frozen=True)
class AlignSpec:
    """How each layer's map is fitted (the arguments of :func:`~unlock_lens.align.fit_alignment`).

    ``centered=None`` means the authors' rule, resolved by :meth:`for_key`: uncentred for a
    mean-difference key, centred for a PCA key. ``clamp_rank=True`` lowers a rank above
    min(n, d_src, d_tgt) to that limit with a warning (the authors' code does it silently);
    by default such a rank is refused. ``data``: which paired states the maps are fitted on
    (:mod:`unlock_lens.alignment_data`: ``last``, the authors'; ``tokens``; ``text``;
    ``continuations``; or a ``+``-joined combination), at most ``max_pairs`` pairs drawn with
    ``data_seed``. ``continuations`` are generated greedily by the source's unlocked variant, at
    most ``continuation_tokens`` tokens, cut at ``continuation_stop`` (``None``: none when
    calling ``align_key``; :class:`~unlock_lens.unlock.Unlock` uses its protocol's stop strings).

    A bare ``AlignSpec()`` is the authors' fit (``last``, svd, rank 16). The library's default
    alignment is its protocol's (``get_protocol("library")``: ``tokens+last``, svd, rank 256),
    which ``Unlock`` and the CLI use; README "Which data to use" gives the evidence for it.
    """

    method: str = "svd"
    rank: int = 16
    centered: bool | None = None
    holdout: float = 0.0
    fit_kwargs: Mapping[str, Any] = field(default_factory=dict)
    clamp_rank: bool = False
    data: str = "last"
    max_pairs: int | None = None
    data_seed: int = 0
    continuation_tokens: int = 64
    continuation_stop: tuple[str, ...] | None = None

    def for_key(self, key: Any) -> AlignSpec:
        """This spec with ``centered`` resolved for ``key`` (a MasterKey; ``aggregator`` read)."""
        if self.centered is not None:
            return self
        return replace(self, centered=getattr(key, "aggregator", "mean") == "pca")

    def record(self) -> dict[str, Any]:
        """The JSON-able record a pack keeps of how its maps were fitted."""
        return {
            "method": self.method, "rank": self.rank, "centered": bool(self.centered),
            "holdout": self.holdout, **({"clamp_rank": True} if self.clamp_rank else {}),
            "data": self.data, "max_pairs": self.max_pairs, "data_seed": self.data_seed,
            **({"continuation_tokens": self.continuation_tokens,
                "continuation_stop": list(self.continuation_stop or ())}
               if "continuations" in self.data else {}),
            "fit_kwargs": {k: v for k, v in self.fit_kwargs.items() if isinstance(v, int | float | str | bool)},
        }


def fit_layer_maps(
    H_src: Float[Tensor, "n n_src_layers d_src"],
    H_tgt: Float[Tensor, "n n_tgt_layers d_tgt"],
    pairing: LayerPairing,
    spec: AlignSpec,
) -> dict[int, LayerMap]:
    """One LayerMap per target layer of ``pairing``, fitted on paired rows of the captures.

    ``H_src``'s layer axis holds ``pairing.source_layers`` in order, ``H_tgt``'s holds
    ``pairing.target_layers``; row i of both is the same prompt (or token pair).
    """
    s_layers, t_layers = pairing.source_layers, pairing.target_layers
    if H_src.ndim != 3 or H_tgt.ndim != 3:
        raise UnlockLensError(
            f"captures must be [n, layers, d], got {tuple(H_src.shape)} and {tuple(H_tgt.shape)}"
        )
    if H_src.shape[1] != len(s_layers) or H_tgt.shape[1] != len(t_layers):
        raise UnlockLensError(
            f"captures hold {H_src.shape[1]} source and {H_tgt.shape[1]} target layers, but the "
            f"pairing needs source layers {s_layers} and target layers {t_layers}: capture those"
        )
    centered = bool(spec.centered)
    rank = spec.rank
    if spec.clamp_rank:
        n = H_src.shape[0]
        n_fit = n - (max(1, round(spec.holdout * n)) if spec.holdout > 0 else 0)
        limit = min(n_fit, H_src.shape[-1], H_tgt.shape[-1])
        if rank > limit:
            warnings.warn(f"rank {rank} > min(n={n_fit}, d_src={H_src.shape[-1]}, d_tgt="
                          f"{H_tgt.shape[-1]}): clamped to {limit}", stacklevel=2)
            rank = limit
    maps: dict[int, LayerMap] = {}
    for j, t in enumerate(t_layers):
        s = pairing.source_of[t]
        maps[t] = fit_alignment(
            H_src[:, s_layers.index(s)], H_tgt[:, j], method=spec.method, rank=rank,
            centered=centered, holdout=spec.holdout, source_layer=s, target_layer=t,
            **spec.fit_kwargs,
        )
    return maps


def map_directions(
    key: Any, maps: Mapping[int, LayerMap]
) -> dict[int, Float[Tensor, " d_tgt"]]:
    """r^(t) = m^(s(t)) W_t for every target layer of ``maps``.

    ``key``: a MasterKey (``key.direction(s)``) or a mapping source layer -> direction.
    A direction that maps to zero or non-finite values is refused (the map's subspace misses it).
    """
    direction = key.direction if hasattr(key, "direction") else key.__getitem__
    out: dict[int, Tensor] = {}
    for t, layer_map in sorted(maps.items()):
        r = layer_map.transform(direction(layer_map.source_layer).float())
        if not torch.isfinite(r).all() or float(r.norm()) == 0.0:
            raise UnlockLensError(
                f"the key maps to a zero or non-finite direction at target layer {t} "
                f"({layer_map.method}, rank {layer_map.rank}): the alignment subspace misses "
                "the key; use a larger rank"
            )
        out[t] = r
    return out


def fit_layer_maps_from_stats(
    stats: Mapping[int, GramStats], pairing: LayerPairing, spec: AlignSpec
) -> dict[int, LayerMap]:
    """:func:`fit_layer_maps` from per-layer sufficient statistics instead of captured rows.

    ``stats[t]`` is the :class:`GramStats` of (source layer ``pairing.source_of[t]``, target
    layer ``t``) rows, for every target layer of ``pairing``. Memory depends on d, not on the
    number of rows. ``spec.holdout`` must be 0 (the rows are gone); ``clamp_rank`` clamps to
    the smallest ``min(n, d_src, d_tgt)`` over the layers.
    """
    if spec.holdout > 0:
        raise UnlockLensError(
            f"spec.holdout={spec.holdout}: a seeded holdout needs the rows, which statistics do "
            "not keep; fit with holdout=0 and score held-out rows with align.stats_metrics"
        )
    t_layers = pairing.target_layers
    missing = [t for t in t_layers if t not in stats]
    if missing:
        raise UnlockLensError(
            f"no statistics for target layers {missing} (have {sorted(stats)}); accumulate a "
            "GramStats for every target layer of the pairing"
        )
    rank = spec.rank
    if spec.clamp_rank:
        limit = min(min(stats[t].n, stats[t].d_src, stats[t].d_tgt) for t in t_layers)
        if rank > limit:
            warnings.warn(f"rank {rank} > min(n, d_src, d_tgt) = {limit} over the layers' "
                          f"statistics: clamped to {limit}", stacklevel=2)
            rank = limit
    return {
        t: fit_from_stats(stats[t], spec.method, rank, bool(spec.centered), source_layer=pairing.source_of[t],
                          target_layer=t, **spec.fit_kwargs)
        for t in t_layers
    }
