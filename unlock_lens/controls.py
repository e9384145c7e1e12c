"""Control directions: random vectors with the same per-layer norms as a steering key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def random_like(directions: Mapping[int, Tensor], seed: int) -> dict[int, Tensor]:
    """Isotropic random directions, one per layer, with the same norms as ``directions``.

    Seeded with a local generator (no global RNG state is touched).
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for layer in sorted(directions):
        v = directions[layer].float().cpu()
        g = torch.randn(v.shape, generator=gen)
        out[layer] = g * (v.norm() / g.norm().clamp_min(1e-12))
    return out
