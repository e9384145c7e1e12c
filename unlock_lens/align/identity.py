"""The no-op map ``W = I`` (same-width models; a baseline for cross-model transfer)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import LayerMap, as_float32, center, register_method
from unlock_lens.errors import UnlockLensError


@register_method("identity", uses_rank=False)
def fit_identity(
    X_src: Float[Tensor, "n d"],
    X_tgt: Float[Tensor, "n d"],
    rank: int | None = None,
    centered: bool = False,
) -> LayerMap:
    """``W = I`` (bases and core are identities). ``centered=True`` stores both means, so
    ``predict`` shifts source activations onto the target mean. ``rank`` is ignored (= d).
    """
    del rank
    Xs, Xt = as_float32(X_src), as_float32(X_tgt)
    d = Xs.shape[1]
    if Xt.shape[1] != d:
        raise UnlockLensError(
            f"method 'identity' needs equal widths but d_src={d} != d_tgt={Xt.shape[1]}"
        )
    _, mu_s = center(Xs, centered)
    _, mu_t = center(Xt, centered)
    eye = torch.eye(d, dtype=Xs.dtype, device=Xs.device)
    return LayerMap(
        source_basis=eye,
        core=eye.clone(),
        target_basis=eye.clone(),
        source_mean=mu_s,
        target_mean=mu_t,
        method="identity",
        rank=d,
        centered=centered,
    )
