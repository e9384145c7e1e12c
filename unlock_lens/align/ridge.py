"""Full-rank baseline: centred ridge regression from source to target activations."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import LayerMap, as_float32, center, register_method


@register_method("ridge", uses_rank=False)
def fit_ridge(
    X_src: Float[Tensor, "n d_src"],
    X_tgt: Float[Tensor, "n d_tgt"],
    rank: int | None = None,
    centered: bool = True,
    alpha: float | None = None,
) -> LayerMap:
    """``W = (X^T X + alpha I)^{-1} X^T Y`` on centred ``X``, ``Y``; identity bases, ``core = W``.

    ``alpha`` defaults to ``1e-2 * trace(X^T X) / d_src`` (1% of the mean per-dimension energy)
    and is recorded in ``metrics["alpha"]``. When ``n < d_src`` the equivalent dual form
    ``X^T (X X^T + alpha I)^{-1} Y`` is solved. ``rank`` is ignored (recorded as
    ``min(d_src, d_tgt)``) and ``centered`` is ignored (ridge is always centred).
    """
    del rank, centered
    X, mu_s = center(as_float32(X_src), True)
    Y, mu_t = center(as_float32(X_tgt), True)
    n, d_src = X.shape
    d_tgt = Y.shape[1]
    if alpha is None:
        alpha = 1e-2 * float(X.square().sum()) / d_src
    alpha = float(alpha)
    if alpha <= 0:
        alpha = torch.finfo(X.dtype).eps  # all-zero source: any tiny ridge gives W = 0
    if n < d_src:
        gram = X @ X.T + alpha * torch.eye(n, dtype=X.dtype, device=X.device)
        W = X.T @ torch.linalg.solve(gram, Y)
    else:
        gram = X.T @ X + alpha * torch.eye(d_src, dtype=X.dtype, device=X.device)
        W = torch.linalg.solve(gram, X.T @ Y)
    return LayerMap(
        source_basis=torch.eye(d_src, dtype=X.dtype, device=X.device),
        core=W,
        target_basis=torch.eye(d_tgt, dtype=X.dtype, device=X.device),
        source_mean=mu_s,
        target_mean=mu_t,
        method="ridge",
        rank=min(d_src, d_tgt),
        centered=True,
        metrics={"alpha": alpha},
    )
