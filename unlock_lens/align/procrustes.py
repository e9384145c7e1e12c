"""Scaled orthogonal Procrustes between the two models' top-k SVD coordinates."""

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


def procrustes_rotation(
    A: Float[Tensor, "n k"], B: Float[Tensor, "n k"]
) -> tuple[Float[Tensor, "k k"], float]:
    """Orthogonal ``R = argmin ||A R - B||_F`` (``U V^T`` from ``svd(A^T B)``) and the scale.

    The scale ``s = trace(Sigma) / ||A||_F^2`` minimises ``||s A R - B||_F`` given ``R``.
    """
    U, S, Vh = torch.linalg.svd(A.T @ B)
    R = U @ Vh
    norm2 = A.square().sum()
    scale = float(S.sum() / norm2) if norm2 > 0 else 0.0
    return R, scale


@register_method("procrustes")
def fit_procrustes(
    X_src: Float[Tensor, "n d_src"],
    X_tgt: Float[Tensor, "n d_tgt"],
    rank: int,
    centered: bool = False,
) -> LayerMap:
    """``W = V_s (s R) V_t^T``: top-``rank`` bases as in ``svd``, an orthogonal ``R`` times a scale.

    ``R`` and ``s`` come from :func:`procrustes_rotation` on ``A = H_s V_s``, ``B = H_t V_t``;
    ``metrics["scale"]`` holds ``s`` so ``core / s`` recovers ``R``.
    """
    Hs, mu_s = center(as_float32(X_src), centered)
    Ht, mu_t = center(as_float32(X_tgt), centered)
    Vs, Ss = top_right_singular_vectors(Hs, rank)
    Vt, St = top_right_singular_vectors(Ht, rank)
    R, scale = procrustes_rotation(Hs @ Vs, Ht @ Vt)
    return LayerMap(
        source_basis=Vs,
        core=scale * R,
        target_basis=Vt,
        source_mean=mu_s,
        target_mean=mu_t,
        method="procrustes",
        rank=rank,
        centered=centered,
        metrics={
            "scale": scale,
            "source_energy": energy_captured(Ss, rank),
            "target_energy": energy_captured(St, rank),
        },
    )
