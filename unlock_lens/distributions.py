"""Next-token distributions compared, from logits: KL divergence, entropy, top-k mass.

Pure tensor functions at the bottom of the module graph: generation (first-token entropy),
the diagnostics and the analysis scripts all use these.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def kl_divergence(
    p_logits: Float[Tensor, "n vocab"], q_logits: Float[Tensor, "n vocab"]
) -> Float[Tensor, " n"]:
    """KL(P || Q) per row, from logits (natural log units)."""
    log_p = torch.log_softmax(p_logits.float(), -1)
    log_q = torch.log_softmax(q_logits.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def entropy(logits: Float[Tensor, "n vocab"]) -> Float[Tensor, " n"]:
    """Shannon entropy per row (nats)."""
    log_p = torch.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum(-1)


def top_k_mass(
    reference: Float[Tensor, "n vocab"], logits: Float[Tensor, "n vocab"], k: int = 5
) -> Float[Tensor, " n"]:
    """Probability mass ``logits`` puts on the ``k`` most likely tokens of ``reference``."""
    top = reference.topk(k, dim=-1).indices
    return torch.softmax(logits.float(), -1).gather(-1, top).sum(-1)
