"""CCA map: carry source canonical variates onto target canonical variates (always centred)."""

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


def _sym_powers(C: Float[Tensor, "k k"]) -> tuple[Float[Tensor, "k k"], Float[Tensor, "k k"]]:
    """``(C^{-1/2}, C^{1/2})`` of a symmetric positive-definite matrix."""
    evals, evecs = torch.linalg.eigh(C)
    evals = evals.clamp_min(torch.finfo(C.dtype).tiny)
    root = evals.sqrt()
    return (evecs / root) @ evecs.T, (evecs * root) @ evecs.T


@register_method("cca")
def fit_cca(
    X_src: Float[Tensor, "n d_src"],
    X_tgt: Float[Tensor, "n d_tgt"],
    rank: int,
    centered: bool = True,
    eps: float = 1e-6,
    scale_by_correlation: bool = False,
) -> LayerMap:
    """``W = V_s C_a^{-1/2} U V^T C_b^{1/2} V_t^T`` on top-``rank`` centred PCA coordinates.

    ``A = X_s V_s``, ``B = X_t V_t`` (centred); ``C_a``, ``C_b`` their covariances plus
    ``eps * mean eigenvalue * I``; ``U diag(rho) V^T`` the SVD of the whitened cross-covariance
    ``C_a^{-1/2} C_ab C_b^{-1/2}``. ``rho`` is stored as ``extras["canonical_correlations"]``.
    ``scale_by_correlation=True`` inserts ``diag(rho)`` (the least-squares prediction of the
    target variates) instead of mapping variates one-to-one. ``centered`` is ignored (CCA
    is always centred).
    """
    del centered
    Xs, mu_s = center(as_float32(X_src), True)
    Xt, mu_t = center(as_float32(X_tgt), True)
    Vs, Ss = top_right_singular_vectors(Xs, rank)
    Vt, St = top_right_singular_vectors(Xt, rank)
    A, B = Xs @ Vs, Xt @ Vt
    dof = max(A.shape[0] - 1, 1)
    eye = torch.eye(rank, dtype=A.dtype, device=A.device)
    Caa = A.T @ A / dof
    Cbb = B.T @ B / dof
    Caa = Caa + eps * (Caa.trace() / rank) * eye
    Cbb = Cbb + eps * (Cbb.trace() / rank) * eye
    Cab = A.T @ B / dof
    Caa_inv_half, _ = _sym_powers(Caa)
    Cbb_inv_half, Cbb_half = _sym_powers(Cbb)
    U, rho, Vh = torch.linalg.svd(Caa_inv_half @ Cab @ Cbb_inv_half)
    middle = U * rho if scale_by_correlation else U
    core = Caa_inv_half @ middle @ Vh @ Cbb_half
    return LayerMap(
        source_basis=Vs,
        core=core,
        target_basis=Vt,
        source_mean=mu_s,
        target_mean=mu_t,
        method="cca",
        rank=rank,
        centered=True,
        metrics={
            "eps": float(eps),
            "scale_by_correlation": float(scale_by_correlation),
            "mean_canonical_correlation": float(rho.mean()),
            "source_energy": energy_captured(Ss, rank),
            "target_energy": energy_captured(St, rank),
        },
        extras={"canonical_correlations": rho.contiguous()},
    )
