"""Transfer fidelity: does the transferred key make the target write what its own key does?

Apart from whether the native key unlocks anything, a faithful transfer reproduces the native
key's effect: at the same alpha, the same greedy output. A random-mapped direction is the
control (it should share none of the native key's outputs beyond the unsteered ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unlock_lens.errors import UnlockLensError


def token_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of positions where two token sequences agree, over the longer one (1 if both empty).

    >>> token_agreement([1, 2, 3, 4], [1, 2, 9])
    0.5
    """
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b, strict=False)) / longest


def transfer_fidelity(outputs: Sequence[str], reference: Sequence[str], tokenizer: Any) -> dict[str, float]:
    """Per problem, ``outputs[i]`` against ``reference[i]`` (e.g. transferred key vs native key at
    the same alpha): the share of identical outputs and the mean per-token agreement."""
    if len(outputs) != len(reference) or not outputs:
        raise UnlockLensError(f"fidelity compares outputs problem by problem: got {len(outputs)} and "
                              f"{len(reference)} outputs; pass two non-empty lists of the same problems")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    agree = [token_agreement(ids(a), ids(b)) for a, b in zip(outputs, reference, strict=True)]
    return {
        "identical_rate": sum(a == b for a, b in zip(outputs, reference, strict=True)) / len(outputs),
        "token_agreement": sum(agree) / len(agree),
    }
