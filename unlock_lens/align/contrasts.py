"""The ``contrasts`` alignment data: fit a layer map on other capabilities' key directions.

    sources, targets = leave_one_out(keys, "french")    # keys: axis -> (source key, target's own key)
    maps = fit_contrast_maps(sources, targets, pairing, AlignSpec("svd", rank=13))
    mapped = map_directions(keys["french"][0], maps)    # the held-out axis, never seen by the fit

Each row pair is one axis's key at source layer ``s(t)`` and the target's *native* key of the same
axis at target layer ``t``, so the map is pinned on exactly the subspace where keys live. Alone,
its rank is at most the number of axes. With ``token_stats`` (the per-layer
:class:`~unlock_lens.align.stats.GramStats` of token pairs, e.g. ``alignment_stats(...,
data="tokens+last")``) the key rows are added to the same statistics, so every method fits from
them unchanged.

Choices:

- **Not centred.** Keys are differences of states (unlocked - locked): they enter the Gram
  matrices with zero column sums, so they never move the token rows' means and a centred method
  (cca, ridge, a pca key's svd) centres the token rows exactly as without them. Centring across
  axes would also drop the component all keys share (adding any instruction moves the states
  alike), which the held-out key contains too and the map must carry.
- **normalise** (default): each axis's pair is divided by its *source* key's norm, so every axis
  weighs the same; the target side keeps its ratio, so a linear relation between the two models'
  keys stays linear (normalising each side on its own would bend it).
- **weight** (with token pairs): the key rows are scaled so their source-side energy (sum of
  squared norms) is ``weight`` times the token rows' (in the fit's centring). ``weight=1`` weighs
  the few key pairs as much as all token pairs together; ``0`` gives the token fit exactly. A
  repetition count would mean different things at 500 and 50,000 token pairs and for keys of
  different norm. The key rows' target side is also scaled by one factor per layer so the two
  row sets agree on the map's gain (||Y|| / ||X||): the keys then pull on the map's directions,
  not on its overall scale (the ``rotate`` and ``unit`` edits use the direction only).

Why not a kind in ``AlignSpec.data``: those kinds name which states of the *alignment prompts*
are captured (:mod:`unlock_lens.alignment_data`); this one reads no prompt but already extracted
keys of other axes in both models, has a rank bound by their number and mixes with token pairs by
a weight. It is this separate entry point; to record it in a pack, pass
``replace(spec, data="contrasts")`` (or ``"tokens+last+contrasts"``) to
``CapabilityPack.from_alignment``; each map's ``metrics`` keep ``contrast_rows`` (and
``contrast_weight`` with token pairs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import _RANK_FREE, LayerMap
from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps_from_stats
from unlock_lens.align.stats import STATS_METHODS, GramStats
from unlock_lens.errors import UnlockLensError
from unlock_lens.masterkey import MasterKey

#: methods whose fit centres the rows whatever ``spec.centered`` says (stats.py)
_ALWAYS_CENTRED = ("cca", "ridge")

ContrastRows = tuple[Float[Tensor, "n_axes d_src"], Float[Tensor, "n_axes d_tgt"]]


def _check_keys(source_keys: Sequence[MasterKey], target_keys: Sequence[MasterKey]) -> list[str]:
    """The axis names, after refusing keys that cannot be paired row by row."""
    for side, keys in (("source", source_keys), ("target", target_keys)):
        bad = [type(k).__name__ for k in keys if not isinstance(k, MasterKey)]
        if bad:
            raise UnlockLensError(f"{side}_keys holds {bad[0]}, not MasterKey: pass the extracted keys")
    if len(source_keys) != len(target_keys):
        raise UnlockLensError(
            f"{len(source_keys)} source keys but {len(target_keys)} target keys: pass one target "
            "(native) key per source key, axis by axis in the same order")
    if not source_keys:
        raise UnlockLensError("no keys given: contrasts need the keys of at least 2 other axes")
    names = [k.capability for k in source_keys]
    swapped = [(s.capability, t.capability) for s, t in zip(source_keys, target_keys, strict=True)
               if s.capability != t.capability]
    if swapped:
        raise UnlockLensError(
            f"source and target keys name different axes at the same position {swapped[:3]}: "
            "pass both lists in the same axis order (leave_one_out does)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UnlockLensError(
            f"axes {repeated} appear more than once: give each key its axis name "
            "(extract_masterkey(..., capability=axis)) and pass each axis once")
    for side, keys in (("source", source_keys), ("target", target_keys)):
        shapes = {(k.source.model_id, k.source.n_layers, k.source.d_model) for k in keys}
        if len(shapes) > 1:
            raise UnlockLensError(
                f"the {side} keys come from different models (model id, layers, d_model: "
                f"{sorted(shapes)}): pass keys of one {side} model")
    return names


def contrast_pairs(
    source_keys: Sequence[MasterKey],
    target_keys: Sequence[MasterKey],
    pairing: LayerPairing,
    *,
    normalise: bool = True,
) -> dict[int, ContrastRows]:
    """Per target layer ``t`` of ``pairing``: ``(X, Y)``, row i = axis i's source key at layer
    ``s(t)`` and its target key at layer ``t`` (float32).

    ``source_keys[i]`` and ``target_keys[i]`` are one axis's key in the source and the target's own
    key of the same axis (same ``capability``). ``normalise``: each row pair divided by its source
    key's norm (module docstring).
    """
    names = _check_keys(source_keys, target_keys)
    for key in source_keys:
        pairing.require_source(key.layers)
    t_layers = pairing.target_layers
    for key in target_keys:
        missing = [t for t in t_layers if t not in key.layers]
        if missing:
            raise UnlockLensError(
                f"the target key of axis {key.capability!r} has no direction at target layers "
                f"{missing} (it covers {key.layers}): extract the target keys at all layers")
    out: dict[int, ContrastRows] = {}
    for t in t_layers:
        X = torch.stack([k.direction(pairing.source_of[t]).float() for k in source_keys])
        Y = torch.stack([k.direction(t).float() for k in target_keys])
        if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
            raise UnlockLensError(f"a key holds NaN/inf at target layer {t} (or its source layer): "
                                  "re-extract it")
        if normalise:
            norms = X.norm(dim=1, keepdim=True)
            zero = [names[i] for i in (norms[:, 0] == 0).nonzero().flatten().tolist()]
            if zero:
                raise UnlockLensError(
                    f"the source keys of axes {zero} are zero at layer {pairing.source_of[t]}: "
                    "they carry no direction; leave those axes out")
            X, Y = X / norms, Y / norms
        out[t] = (X, Y)
    return out


def contrast_stats(
    X_src: Float[Tensor, "n_axes d_src"], X_tgt: Float[Tensor, "n_axes d_tgt"]
) -> GramStats:
    """The statistics of key rows alone: the Gram sums of the rows, column sums zero (directions
    are not centred, so even a centred method fits them as they are)."""
    stats = GramStats.empty(int(torch.as_tensor(X_src).shape[-1]), int(torch.as_tensor(X_tgt).shape[-1]))
    stats.update(X_src, X_tgt)
    stats.sum_src.zero_()
    stats.sum_tgt.zero_()
    return stats


def add_contrast_rows(
    stats: GramStats,
    X_src: Float[Tensor, "n_axes d_src"],
    X_tgt: Float[Tensor, "n_axes d_tgt"],
    weight: float,
    *,
    centered: bool = False,
    match_gain: bool = True,
) -> GramStats:
    """Token-pair ``stats`` with the key rows added (a new object; ``stats`` is unchanged).

    The rows are scaled by ``c`` with ``c^2 ||X_src||^2 = weight * trace(G_src)`` (``G_src`` the
    token rows' Gram in the fit's centring); with ``match_gain`` the target rows also by ``g`` with
    ``g ||X_tgt|| / ||X_src|| = sqrt(trace(G_tgt) / trace(G_src))``. They enter ``X^T X``,
    ``X^T Y`` and ``Y^T Y`` only: ``n`` and the column sums (hence the means and the centring)
    stay the token rows'. ``weight=0`` returns statistics equal to ``stats``.
    """
    if not isinstance(stats, GramStats):
        raise UnlockLensError(f"stats must be a GramStats, got {type(stats).__name__}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0 \
            or not math.isfinite(weight):
        raise UnlockLensError(f"weight must be a finite number >= 0 (the key rows' share of the token "
                              f"rows' energy), got {weight!r}")
    rows = contrast_stats(X_src, X_tgt)
    if (rows.d_src, rows.d_tgt) != (stats.d_src, stats.d_tgt):
        raise UnlockLensError(
            f"key rows of widths ({rows.d_src}, {rows.d_tgt}) do not fit token statistics of widths "
            f"({stats.d_src}, {stats.d_tgt}): use keys of the models and layers the token pairs read")
    tok_src = float(stats.gram_src(centered).trace())
    tok_tgt = float(stats.gram_tgt(centered).trace())
    key_src, key_tgt = float(rows.src_src.trace()), float(rows.tgt_tgt.trace())
    if weight > 0 and (tok_src <= 0 or key_src <= 0):
        what = "token statistics" if tok_src <= 0 else "key rows"
        raise UnlockLensError(f"the {what} have zero energy, so weight={weight} scales nothing: "
                              "accumulate token pairs first and pass non-zero keys")
    c2 = weight * tok_src / key_src if weight > 0 else 0.0
    g = 1.0
    if match_gain and weight > 0 and key_tgt > 0:
        g = math.sqrt(tok_tgt / tok_src) / math.sqrt(key_tgt / key_src)
    out = stats.merge(GramStats.empty(stats.d_src, stats.d_tgt, stats.device))  # a copy
    out.src_src += c2 * rows.src_src.to(out.device)
    out.src_tgt += c2 * g * rows.src_tgt.to(out.device)
    out.tgt_tgt += c2 * g * g * rows.tgt_tgt.to(out.device)
    return out


def fit_contrast_maps(
    source_keys: Sequence[MasterKey],
    target_keys: Sequence[MasterKey],
    pairing: LayerPairing,
    spec: AlignSpec = AlignSpec(),  # noqa: B008 - frozen dataclass
    *,
    token_stats: Mapping[int, GramStats] | None = None,
    weight: float = 1.0,
    normalise: bool = True,
) -> dict[int, LayerMap]:
    """One LayerMap per target layer of ``pairing``, fitted on the keys' row pairs
    (:func:`contrast_pairs`), alone or added to ``token_stats`` with ``weight``
    (:func:`add_contrast_rows`).

    ``spec``: method, rank, ``fit_kwargs`` and centring (``centered=None``: the authors' rule for
    ``source_keys[0]``'s aggregator); ``spec.data`` is not read (the token pairs are whatever
    ``token_stats`` hold). Alone, a rank above the number of axes is clamped to it with a
    warning. Pass only the *other* axes' keys to map a held-out one (:func:`leave_one_out`).
    """
    if spec.method not in STATS_METHODS:
        raise UnlockLensError(f"method {spec.method!r} has no fit from statistics; contrasts fit "
                              f"with one of {sorted(STATS_METHODS)}")
    pairs = contrast_pairs(source_keys, target_keys, pairing, normalise=normalise)
    spec = spec.for_key(source_keys[0])
    n_rows = len(source_keys)
    if token_stats is None:
        if n_rows < 2:
            raise UnlockLensError(
                f"contrasts alone need the keys of at least 2 axes to fit a map, got {n_rows}: "
                "register more axes or add token pairs (token_stats=...)")
        stats = {t: contrast_stats(X, Y) for t, (X, Y) in pairs.items()}
        X0, Y0 = next(iter(pairs.values()))
        limit = min(n_rows, X0.shape[1], Y0.shape[1])
        if spec.method not in _RANK_FREE and spec.rank > limit:
            warnings.warn(f"rank {spec.rank} > {n_rows} key pairs (contrasts alone): clamped to {limit}",
                          stacklevel=2)
            spec = replace(spec, rank=limit)
    else:
        missing = [t for t in pairing.target_layers if t not in token_stats]
        if missing:
            raise UnlockLensError(f"token_stats has no statistics for target layers {missing}: "
                                  "accumulate them with the same pairing (alignment_stats)")
        centered = bool(spec.centered) or spec.method in _ALWAYS_CENTRED
        stats = {t: add_contrast_rows(token_stats[t], X, Y, weight, centered=centered)
                 for t, (X, Y) in pairs.items()}
    maps = fit_layer_maps_from_stats(stats, pairing, spec)
    for layer_map in maps.values():
        layer_map.metrics["contrast_rows"] = float(n_rows)
        if token_stats is not None:
            layer_map.metrics["contrast_weight"] = float(weight)
    return maps


def leave_one_out(
    keys: Mapping[str, tuple[MasterKey, MasterKey]], held_out: str
) -> tuple[list[MasterKey], list[MasterKey]]:
    """``(source keys, target keys)`` of every axis but ``held_out``, in ``keys``' order.

    ``keys``: axis name -> (its key in the source, the target's own key of the same axis).
    """
    if held_out not in keys:
        raise UnlockLensError(f"held-out axis {held_out!r} is not among the keys {sorted(keys)}: "
                              "pass one of them")
    others = [(name, pair) for name, pair in keys.items() if name != held_out]
    for name, pair in others:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise UnlockLensError(f"keys[{name!r}] must be a (source key, target key) pair, got "
                                  f"{type(pair).__name__}")
        axes = tuple(getattr(k, "capability", None) for k in pair)
        if axes != (name, name):
            raise UnlockLensError(f"keys[{name!r}] holds keys of axes {axes}: file each axis's "
                                  "(source key, target key) under its own name")
    return [p[0] for _, p in others], [p[1] for _, p in others]
