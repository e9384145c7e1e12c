"""How alike are two models' representations, per matched layer pair? (pure torch, no models)

- :func:`principal_angles` between two subspaces (bases or activation matrices + k), e.g. the
  mapped source subspace vs the target's own top-k subspace (:func:`mapped_subspace_angles`).
- :func:`linear_cka` (Kornblith et al. 2019), optionally debiased, and :func:`cka_matrix`: a
  source-layer x target-layer table over two models' captured activations.
- :func:`cca_spectrum`: canonical correlations on top-k PCA coordinates (via ``align.cca``).
- :func:`alignment_table`: train / held-out R^2 and relative error of fitted LayerMaps;
  :func:`alignment_sweep` refits them over methods x ranks from cached captures.
- :func:`key_cosines`: cosine between the transferred key and the target's native key per layer.

Everything is computed in float64 (subspace angles near 0 and CKA near 1 need it) on the
inputs' device; results come back as float64 tensors or tidy pandas DataFrames.

Caveat on CKA: linear CKA of *independent* isotropic data is not near 0 unless n >> d. For
n samples of d1- and d2-dimensional Gaussians, E[CKA] ~ sqrt(d1 d2 / ((n + d1)(n + d2))), i.e.
d / (n + d) for equal widths (0.91 for n = 100, d = 1000). With few prompts and wide models use
``debiased=True`` (the unbiased HSIC estimator of Song et al. 2012), whose null value is ~0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.cca import fit_cca
from unlock_lens.errors import UnlockLensError


def _f64(x: Any) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _check_matrix(X: Any, name: str) -> Tensor:
    X = _f64(X)
    if X.ndim != 2:
        raise UnlockLensError(f"{name} must be 2-D, got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise UnlockLensError(f"{name} contains NaN/inf")
    return X


# ---- subspaces -----------------------------------------------------------------------------


def orthonormal_basis(B: Float[Tensor, "d k"], rtol: float = 1e-10) -> Float[Tensor, "d r"]:
    """Orthonormal basis (columns) of the column span of ``B``; null directions are dropped.

    ``r`` = numerical rank: singular values above ``rtol * max singular value``.
    """
    B = _check_matrix(B, "basis")
    U, S, _ = torch.linalg.svd(B, full_matrices=False)
    if S.numel() == 0 or float(S[0]) == 0.0:
        raise UnlockLensError("the basis spans nothing (all columns are zero)")
    return U[:, rtol * S[0] < S]


def top_subspace(
    X: Float[Tensor, "n d"], k: int, *, centered: bool = True
) -> Float[Tensor, "d k"]:
    """Top-``k`` right singular vectors of ``X`` (PCA directions when ``centered``)."""
    X = _check_matrix(X, "activations")
    if not 1 <= k <= min(X.shape):
        raise UnlockLensError(f"k={k} must be in [1, min(n, d)] = [1, {min(X.shape)}]")
    if centered:
        X = X - X.mean(0)
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return Vh[:k].T


def principal_angles(
    A: Float[Tensor, "d ka"], B: Float[Tensor, "d kb"]
) -> Float[Tensor, " r"]:
    """Principal angles (radians, ascending) between the column spans of ``A`` and ``B``.

    Columns need not be orthonormal. ``r = min(rank A, rank B)``. Uses cosines for large
    angles and sines for small ones (Björck & Golub 1973), so identical spans give ~1e-8
    rather than the ~1e-4 that ``arccos`` alone would.
    """
    if A.shape[0] != B.shape[0]:
        raise UnlockLensError(
            f"subspaces live in different spaces: A is {A.shape[0]}-dim, B is {B.shape[0]}-dim"
        )
    Qa, Qb = orthonormal_basis(A), orthonormal_basis(B)
    if Qa.shape[1] > Qb.shape[1]:
        Qa, Qb = Qb, Qa
    r = Qa.shape[1]
    cos = torch.linalg.svdvals(Qa.T @ Qb)[:r].clamp(0.0, 1.0)
    sin = torch.linalg.svdvals(Qa - Qb @ (Qb.T @ Qa))  # descending sines = ascending angles
    sin = sin.flip(0)[:r].clamp(0.0, 1.0)
    by_cos = torch.arccos(cos)
    by_sin = torch.arcsin(sin)
    return torch.where(cos > math.sqrt(0.5), by_sin, by_cos)


def subspace_angles(
    X_a: Float[Tensor, "n_a d"], X_b: Float[Tensor, "n_b d"], k: int, *, centered: bool = True
) -> Float[Tensor, " k"]:
    """Principal angles between the top-``k`` subspaces of two activation matrices (same space)."""
    return principal_angles(
        top_subspace(X_a, k, centered=centered), top_subspace(X_b, k, centered=centered)
    )


def mapped_subspace_angles(
    layer_map: Any, X_src: Float[Tensor, "n d_src"], X_tgt: Float[Tensor, "n d_tgt"], k: int,
    *, centered: bool = True,
) -> Float[Tensor, " r"]:
    """Angles between the source's top-``k`` subspace carried through ``layer_map`` and the
    target's own top-``k`` subspace (both in target space; ``r <= k`` if the map loses rank).

    Informative for full-width maps (``ridge``) or maps fitted on other data (another split).
    A rank-k ``svd`` / ``procrustes`` / ``cca`` map fitted on these same activations has its
    image inside the target's top-k subspace by construction (W = V_s T V_t^T), so with the
    same centring and k its angles are ~0 whatever the data.
    """
    V_s = top_subspace(X_src, k, centered=centered)
    mapped = _f64(layer_map.transform(V_s.T.to(torch.float32)))  # [k, d_tgt]: rows span the image
    return principal_angles(mapped.T, top_subspace(X_tgt, k, centered=centered))


def energy_in_subspace(v: Float[Tensor, "... d"], basis: Float[Tensor, "d k"]) -> Float[Tensor, "..."]:
    """``||P v||^2 / ||v||^2``: the share of ``v`` inside the span of ``basis`` (cos^2 of its angle).

    E.g. the target's native key against the target's top-k activation subspace: the largest
    squared cosine to that key that any direction in the subspace (such as one carried by a
    rank-k ``svd`` map) can reach.
    """
    Q = orthonormal_basis(basis)
    v = _f64(v).to(Q.device)
    proj = (v @ Q).square().sum(-1)
    total = v.square().sum(-1)
    return torch.where(total > 0, proj / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def principal_angle_table(
    H_src: Float[Tensor, "n Ls d_s"], H_tgt: Float[Tensor, "n Lt d_t"],
    maps: Mapping[int, Any], k: int, *, source_layers: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None, centered: bool = True,
) -> pd.DataFrame:
    """Tidy ``mapped_subspace_angles`` per fitted map: columns ``source_layer, target_layer,
    index, angle, angle_deg``. ``H_*[:, j]`` holds ``*_layers[j]`` (default ``range(L)``)."""
    s_layers = list(range(H_src.shape[1])) if source_layers is None else list(source_layers)
    t_layers = list(range(H_tgt.shape[1])) if target_layers is None else list(target_layers)
    rows = []
    for t, layer_map in sorted(maps.items()):
        s = layer_map.source_layer
        angles = mapped_subspace_angles(
            layer_map, H_src[:, s_layers.index(s)], H_tgt[:, t_layers.index(t)], k,
            centered=centered,
        )
        for i, a in enumerate(angles.tolist()):
            rows.append({"source_layer": s, "target_layer": t, "index": i + 1, "angle": a,
                         "angle_deg": math.degrees(a)})
    return pd.DataFrame(rows, columns=["source_layer", "target_layer", "index", "angle", "angle_deg"])


# ---- CKA -----------------------------------------------------------------------------------


def _centred_grams(H: Float[Tensor, "n L d"]) -> Float[Tensor, "L n n"]:
    Hc = H - H.mean(0, keepdim=True)
    return torch.einsum("nld,mld->lnm", Hc, Hc)


def _hsic_matrix(K: Float[Tensor, "La n n"], L: Float[Tensor, "Lb n n"], debiased: bool) -> Tensor:
    """Scaled HSIC between every pair of (centred) Gram matrices: ``[La, Lb]``.

    Biased: ``<K, L>_F``. Debiased: Kornblith et al.'s feature-space helper,
    ``<K, L> - n/(n-2) diag(K).diag(L) + tr K tr L / ((n-1)(n-2))``, which equals the
    unbiased HSIC estimator (times a constant that cancels in CKA).
    """
    dot = torch.einsum("anm,bnm->ab", K, L)
    if not debiased:
        return dot
    n = K.shape[-1]
    dk, dl = torch.diagonal(K, dim1=-2, dim2=-1), torch.diagonal(L, dim1=-2, dim2=-1)
    tk, tl = dk.sum(-1), dl.sum(-1)
    return dot - n / (n - 2) * dk @ dl.T + torch.outer(tk, tl) / ((n - 1) * (n - 2))


def _cka_from_grams(K: Tensor, L: Tensor, debiased: bool) -> Tensor:
    cross = _hsic_matrix(K, L, debiased)
    self_k = torch.stack([_hsic_matrix(k[None], k[None], debiased)[0, 0] for k in K])
    self_l = torch.stack([_hsic_matrix(g[None], g[None], debiased)[0, 0] for g in L])
    denom = torch.sqrt(torch.outer(self_k.clamp_min(0), self_l.clamp_min(0)))
    return torch.where(denom > 0, cross / denom.clamp_min(1e-300), torch.full_like(cross, math.nan))


def _check_debiased_n(n: int, debiased: bool) -> None:
    if n < (4 if debiased else 2):
        raise UnlockLensError(f"CKA needs n >= {4 if debiased else 2} rows, got {n}")


def linear_cka(X: Float[Tensor, "n d1"], Y: Float[Tensor, "n d2"], *, debiased: bool = False) -> float:
    """Linear CKA between two activation matrices with the same rows (prompts).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred X, Y: invariant to
    rotations and isotropic scaling of either side, 1 for identical representations. NaN if
    either side is constant.
    """
    X, Y = _check_matrix(X, "X"), _check_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise UnlockLensError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}: pair the same prompts")
    _check_debiased_n(X.shape[0], debiased)
    return float(_cka_from_grams(_centred_grams(X[:, None]), _centred_grams(Y[:, None]), debiased)[0, 0])


def cka_matrix(
    H_src: Float[Tensor, "n Ls d_s"], H_tgt: Float[Tensor, "n Lt d_t"], *,
    source_layers: Sequence[int] | None = None, target_layers: Sequence[int] | None = None,
    debiased: bool = False,
) -> pd.DataFrame:
    """Linear CKA between every source layer and every target layer, as a tidy frame.

    ``H_*`` are final-token captures (``activations.capture``) of the same prompts, each in
    its own model's format. Columns: ``source_layer, target_layer, cka``. Memory is
    ``(Ls + Lt) n^2`` float64 (Gram matrices), independent of d.
    """
    H_src, H_tgt = _f64(H_src), _f64(H_tgt)
    if H_src.ndim != 3 or H_tgt.ndim != 3 or H_src.shape[0] != H_tgt.shape[0]:
        raise UnlockLensError(
            f"need [n, L, d] captures of the same n prompts, got {tuple(H_src.shape)} and "
            f"{tuple(H_tgt.shape)}"
        )
    _check_debiased_n(H_src.shape[0], debiased)
    s_layers = list(range(H_src.shape[1])) if source_layers is None else list(source_layers)
    t_layers = list(range(H_tgt.shape[1])) if target_layers is None else list(target_layers)
    if len(s_layers) != H_src.shape[1] or len(t_layers) != H_tgt.shape[1]:
        raise UnlockLensError("source_layers / target_layers must name each captured layer once")
    cka = _cka_from_grams(_centred_grams(H_src), _centred_grams(H_tgt), debiased).cpu()
    return pd.DataFrame(
        [
            {"source_layer": s, "target_layer": t, "cka": float(cka[i, j])}
            for i, s in enumerate(s_layers)
            for j, t in enumerate(t_layers)
        ]
    )


# ---- CCA, alignment fit, key cosines ------------------------------------------------------


def cca_spectrum(
    X_src: Float[Tensor, "n d_s"], X_tgt: Float[Tensor, "n d_t"], k: int, *, eps: float = 1e-6
) -> Float[Tensor, " k"]:
    """Canonical correlations (descending) between the top-``k`` centred PCA coordinates.

    Reuses :func:`unlock_lens.align.cca.fit_cca` (its ``canonical_correlations``). With
    ``k`` near ``n - 1`` the correlations approach 1 for any data (overfitting): keep
    ``k`` well below n, or compare against a shuffled-rows baseline.
    """
    X_src, X_tgt = _check_matrix(X_src, "X_src"), _check_matrix(X_tgt, "X_tgt")
    n = X_src.shape[0]
    if X_tgt.shape[0] != n:
        raise UnlockLensError(f"X_src has {n} rows but X_tgt has {X_tgt.shape[0]}")
    limit = min(n - 1, X_src.shape[1], X_tgt.shape[1])
    if not 1 <= k <= limit:
        raise UnlockLensError(f"k={k} must be in [1, min(n - 1, d_s, d_t)] = [1, {limit}]")
    fitted = fit_cca(X_src.float(), X_tgt.float(), k, eps=eps)
    return fitted.extras["canonical_correlations"].to(torch.float64)


def cca_table(
    H_src: Float[Tensor, "n Ls d_s"], H_tgt: Float[Tensor, "n Lt d_t"],
    pairs: Sequence[tuple[int, int]], k: int, *, source_layers: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Tidy CCA spectra for ``(source_layer, target_layer)`` pairs: ``source_layer,
    target_layer, index, correlation``."""
    s_layers = list(range(H_src.shape[1])) if source_layers is None else list(source_layers)
    t_layers = list(range(H_tgt.shape[1])) if target_layers is None else list(target_layers)
    rows = []
    for s, t in pairs:
        rho = cca_spectrum(H_src[:, s_layers.index(s)], H_tgt[:, t_layers.index(t)], k)
        rows += [{"source_layer": s, "target_layer": t, "index": i + 1, "correlation": c}
                 for i, c in enumerate(rho.tolist())]
    return pd.DataFrame(rows, columns=["source_layer", "target_layer", "index", "correlation"])


_METRIC_COLUMNS = ("train_r2", "train_relative_error", "heldout_r2", "heldout_relative_error")


def alignment_table(maps: Mapping[int, Any]) -> pd.DataFrame:
    """Fit quality of LayerMaps (as recorded by ``fit_alignment``), one row per target layer.

    Columns: ``target_layer, source_layer, method, rank`` and ``train_r2``,
    ``train_relative_error``, ``heldout_r2``, ``heldout_relative_error`` (NaN when the map was
    fitted without ``holdout``).
    """
    rows = []
    for t, m in sorted(maps.items()):
        t = t if m.target_layer is None else m.target_layer
        row = {"target_layer": t, "source_layer": m.source_layer, "method": m.method,
               "rank": int(m.rank)}
        row.update({c: float(m.metrics.get(c, math.nan)) for c in _METRIC_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["target_layer", "source_layer", "method", "rank",
                                       *_METRIC_COLUMNS])


def alignment_sweep(
    H_src: Float[Tensor, "n Ls d_s"], H_tgt: Float[Tensor, "n Lt d_t"],
    pairs: Sequence[tuple[int, int]], *, methods: Sequence[str] = ("svd",),
    ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), holdout: float = 0.25, seed: int = 0,
    centered: bool = False, source_layers: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Fit quality over methods x ranks for ``(source_layer, target_layer)`` pairs.

    Refits the maps (:func:`~unlock_lens.align.layers.fit_layer_maps`) from the given captures with a seeded ``holdout`` split (the same
    split for every cell); ranks above min(n_train, d_s, d_t) are dropped. Rows as in
    :func:`alignment_table`; ``ridge`` / ``identity`` (rank-free) get one row per pair.
    """
    from unlock_lens.align.base import _RANK_FREE
    from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps

    s_layers = list(range(H_src.shape[1])) if source_layers is None else list(source_layers)
    t_layers = list(range(H_tgt.shape[1])) if target_layers is None else list(target_layers)
    n = H_src.shape[0]
    n_train = n - max(1, round(holdout * n)) if holdout > 0 else n
    cap = min(n_train, H_src.shape[-1], H_tgt.shape[-1])
    maps = {}
    for method in methods:
        method_ranks = [None] if method in _RANK_FREE else [r for r in ranks if 1 <= r <= cap]
        for r in method_ranks:
            spec = AlignSpec(method, r or 1, centered, holdout, {"seed": seed})
            for s, t in pairs:  # arbitrary pairs, not only depth-matched ones: one fit each
                fitted = fit_layer_maps(H_src[:, [s_layers.index(s)]], H_tgt[:, [t_layers.index(t)]],
                                        LayerPairing({t: s}), spec)
                maps[len(maps)] = fitted[t]
    return alignment_table(maps).reset_index(drop=True)


def _as_layer_dict(x: Any) -> dict[int, Tensor]:
    if isinstance(x, Tensor):
        if x.ndim != 2:
            raise UnlockLensError(f"per-layer directions must be [L, d], got {tuple(x.shape)}")
        return dict(enumerate(x))
    if hasattr(x, "directions") and hasattr(x, "layers"):  # a MasterKey
        return dict(zip(x.layers, x.directions, strict=True))
    return {int(k): v for k, v in x.items()}


def cosine_per_layer(
    a: Float[Tensor, "L d"], b: Float[Tensor, "L d"]
) -> Float[Tensor, " L"]:
    """Row-wise cosine similarity (NaN where a row is zero)."""
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        raise UnlockLensError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp_min(1e-300),
                       torch.full_like(denom, math.nan))


def key_cosines(transferred: Any, native: Any) -> pd.DataFrame:
    """Cosine between the transferred key r^(t) and the target's native key, per layer.

    Each argument: ``{layer: Float[d]}``, a ``Float[L, d]`` tensor (row = layer) or a
    MasterKey (e.g. ``extract_masterkey`` run on the target itself). Layers present in both
    are compared. Columns: ``layer, cosine, transferred_norm, native_norm``.
    """
    a, b = _as_layer_dict(transferred), _as_layer_dict(native)
    layers = sorted(set(a) & set(b))
    if not layers:
        raise UnlockLensError(f"no layer in common: transferred has {sorted(a)}, native {sorted(b)}")
    A = torch.stack([_f64(a[layer]).cpu() for layer in layers])
    B = torch.stack([_f64(b[layer]).cpu() for layer in layers])
    cos = cosine_per_layer(A, B)
    return pd.DataFrame({
        "layer": layers,
        "cosine": cos.tolist(),
        "transferred_norm": A.norm(dim=-1).tolist(),
        "native_norm": B.norm(dim=-1).tolist(),
    })
