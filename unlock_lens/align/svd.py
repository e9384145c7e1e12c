"""The UNLOCK authors' map: least squares between the two models' top-k SVD coordinates."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import (
    LayerMap,
    as_float32,
    center,
    energy_captured,
    register_method,
    top_right_singular_vectors,
)


@register_method("svd")
def fit_svd(
    X_src: Float[Tensor, "n d_src"],
    X_tgt: Float[Tensor, "n d_tgt"],
    rank: int,
    centered: bool = False,
    target_rank: int | None = None,
) -> LayerMap:
    """``W = V_s pinv(H_s V_s) (H_t V_t) V_t^T`` with ``V`` the top-``rank`` right singular vectors.

    Uncentred by default (as for a mean-difference key); ``centered=True`` centres both sides
    first (PCA bases) and stores the means. With ``X_src == X_tgt``, ``W = V V^T``.
    ``target_rank``: the target basis's own rank (default ``rank``), e.g. the authors' per-side
    clamp ``k_t = min(n, d_t, k)``; the core is then ``rank x target_rank``.
    """
    k_t = rank if target_rank is None else target_rank
    Hs, mu_s = center(as_float32(X_src), centered)
    Ht, mu_t = center(as_float32(X_tgt), centered)
    Vs, Ss = top_right_singular_vectors(Hs, rank)
    Vt, St = top_right_singular_vectors(Ht, k_t)
    core = torch.linalg.pinv(Hs @ Vs) @ (Ht @ Vt)
    return LayerMap(
        source_basis=Vs,
        core=core,
        target_basis=Vt,
        source_mean=mu_s,
        target_mean=mu_t,
        method="svd",
        rank=rank,
        centered=centered,
        metrics={
            "source_energy": energy_captured(Ss, rank),
            "target_energy": energy_captured(St, k_t),
            **({"target_rank": float(k_t)} if target_rank is not None else {}),
        },
    )
