"""Control directions: random vectors with the same per-layer norms as a steering key, in the
target (``random_like``) or drawn in the source and carried through the maps (``random_mapped``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def random_mapped(key: Any, maps: Mapping[int, Any], seed: int) -> dict[int, Tensor]:
    """A random-mapped null direction: isotropic random *source* directions with the key's
    per-layer norms (:func:`random_like`, seeded), carried through the same layer maps.

    The control that shares the transferred key's target subspace: if it moves the target as
    much as the key, the effect comes from the subspace, not from the key.
    """
    from unlock_lens.align.layers import map_directions

    source = {layer: key.direction(layer) for layer in key.layers}
    return map_directions(random_like(source, seed), maps)
