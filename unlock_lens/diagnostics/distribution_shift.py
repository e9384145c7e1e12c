"""Does steering move the target's next-token distribution toward its unlocked behaviour?

A cheap proxy measured without generation: the KL divergence from the target's own
CoT-prompted next-token distribution to its direct-prompt distribution, unsteered, steered by
the transferred key, and steered by random directions with the same per-layer norms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.activations import final_logits
from unlock_lens.controls import random_like
from unlock_lens.prompts import COT, PromptFormat
from unlock_lens.steer import Steering


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


def first_token_shift(
    pack: Any,
    target: Any,
    questions: Sequence[str],
    *,
    alpha: float | None = None,
    unlocked_format: PromptFormat | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    seed: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """KL(target+CoT-prompt || condition) for direct, steered and random-direction conditions.

    Lower is closer to the unlocked behaviour. ``unlocked_format`` defaults to the CoT version
    of the pack's target format.
    """
    pack.check_model(target)
    locked = PromptFormat.from_dict(pack.target_format) if pack.target_format else COT
    unlocked = unlocked_format or PromptFormat(
        locked.name.replace("direct", "cot"), COT.instruction, COT.answer_prefix, locked.chat
    )
    if seed is not None:
        seeds = [seed + s for s in seeds]
    tok = target.tokenizer
    direct_prompts = locked.render_all(questions, tok)
    ref = final_logits(target, unlocked.render_all(questions, tok), batch_size=batch_size)
    direct = final_logits(target, direct_prompts, batch_size=batch_size)
    steering = pack.steering(alpha)
    steered = final_logits(target, direct_prompts, batch_size=batch_size, steering=steering)
    random_kl = []
    for s in seeds:
        control = Steering(random_like(steering.directions, s), steering.alpha, steering.normalisation,
                           steering.positions, steering.layers, steering.hook)
        logits = final_logits(target, direct_prompts, batch_size=batch_size, steering=control)
        random_kl.append(float(kl_divergence(ref, logits).mean()))
    kl_direct = float(kl_divergence(ref, direct).mean())
    kl_steered = float(kl_divergence(ref, steered).mean())
    return {
        "n_questions": len(questions),
        "alpha": steering.alpha,
        "kl_to_cot_direct": kl_direct,
        "kl_to_cot_steered": kl_steered,
        "kl_to_cot_random": random_kl,
        "kl_to_cot_random_mean": sum(random_kl) / len(random_kl),
        "entropy_direct": float(entropy(direct).mean()),
        "entropy_steered": float(entropy(steered).mean()),
        "entropy_cot": float(entropy(ref).mean()),
    }
