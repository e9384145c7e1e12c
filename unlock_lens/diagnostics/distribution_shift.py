"""Does steering move the target's next-token distribution toward its unlocked behaviour?

A cheap proxy measured without generation. The reference is the target's own next-token
distribution under the unlocked (CoT) prompt; each condition runs the locked (direct) prompt,
unsteered or steered. Per condition: KL(reference || condition), the probability mass the
condition puts on the reference's top-k tokens, and the entropy. Lower KL / higher mass =
closer to the unlocked behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from unlock_lens.activations import final_logits
from unlock_lens.controls import random_mapped
from unlock_lens.distributions import entropy, kl_divergence, top_k_mass
from unlock_lens.prompts import PromptFormat
from unlock_lens.steer import Steering


def shift_row(reference: Tensor, logits: Tensor, k: int = 5) -> dict[str, float]:
    """Summary numbers of one condition against the reference distribution."""
    return {
        "kl_to_unlocked": float(kl_divergence(reference, logits).mean()),
        f"top{k}_unlocked_mass": float(top_k_mass(reference, logits, k).mean()),
        "entropy": float(entropy(logits).mean()),
    }


def mapped_random_like(pack: Any, seed: int) -> dict[int, Tensor]:
    """A random *source* direction per layer (the key's norms) carried through the pack's maps
    (:func:`unlock_lens.controls.random_mapped`)."""
    return random_mapped(pack.key, pack.maps, seed)


def first_token_shift(
    target: Any,
    questions: Sequence[str],
    locked: PromptFormat,
    unlocked: PromptFormat,
    conditions: Mapping[str, Steering | None],
    *,
    k: int = 5,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per condition: its shift toward the target's own unlocked-prompt distribution.

    ``conditions`` maps a name to a Steering (or None: the unsteered locked prompt);
    ``progress`` shows a bar over the conditions (one forward pass of every question each).
    """
    tok = target.tokenizer
    locked_prompts = locked.render_all(questions, tok)
    reference = final_logits(target, unlocked.render_all(questions, tok), batch_size=batch_size)
    rows = [{"condition": "unlocked-prompt", **shift_row(reference, reference, k)}]
    for name, steering in tqdm(conditions.items(), desc="conditions", disable=not progress):
        logits = final_logits(target, locked_prompts, batch_size=batch_size, steering=steering)
        rows.append({"condition": name, "alpha": getattr(steering, "alpha", 0.0),
                     **shift_row(reference, logits, k)})
    return rows


def control_conditions(pack: Any, alpha: float, seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Steering]:
    """The transferred key and its controls at one alpha, with the pack's other settings."""
    steering = pack.steering(alpha)

    def like(directions: dict[int, Tensor]) -> Steering:
        return Steering(directions, alpha, steering.normalisation, steering.positions, None, steering.hook)

    out = {f"steered a={alpha}": steering}
    for s in seeds:
        out[f"random a={alpha} seed={s}"] = steering.randomized(s)
        out[f"random-mapped a={alpha} seed={s}"] = like(mapped_random_like(pack, s))
    return out
