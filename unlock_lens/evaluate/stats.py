"""Small-sample statistics for accuracy tables: Wilson intervals, paired bootstrap, McNemar;
agreement of two labellings (Cohen's kappa, confusion counts).

Pure functions on Python / NumPy values; no model code, no global random state.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

from unlock_lens.errors import UnlockLensError

__all__ = ["DiffInterval", "cohen_kappa", "confusion_counts", "mcnemar_exact", "paired_bootstrap_diff",
           "wilson_interval"]


class DiffInterval(NamedTuple):
    """A paired difference ``mean(a) - mean(b)`` with its (lo, hi) interval."""

    diff: float
    lo: float
    hi: float


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% for z = 1.96).

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    if n < 0 or k < 0 or k > n:
        raise UnlockLensError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: rounding would miss 0 / 1
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise UnlockLensError(
            f"paired samples must be 1-D and of equal length, got {x.shape} and {y.shape}"
        )
    if x.size == 0:
        raise UnlockLensError("paired samples are empty: pass at least one pair")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise UnlockLensError("paired samples contain NaN/inf")
    return x, y


def paired_bootstrap_diff(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> DiffInterval:
    """``mean(a) - mean(b)`` over paired items with a percentile paired-bootstrap interval.

    Items (index i of both) are resampled together with replacement ``n_boot`` times from a
    local ``numpy`` generator seeded with ``seed``: same inputs and seed, same interval.
    """
    x, y = _paired_arrays(a, b)
    if n_boot < 1:
        raise UnlockLensError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise UnlockLensError(f"confidence must lie in (0, 1), got {confidence}")
    d = x - y
    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    return DiffInterval(float(d.mean()), float(lo), float(hi))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes ``a`` and ``b``.

    With b_ = #(a right, b wrong) and c_ = #(a wrong, b right): the binomial test of
    min(b_, c_) in b_ + c_ trials at p = 1/2, ``min(1, 2 * P[X <= min])``; 1.0 with no
    discordant pairs. Computed with exact integers.
    """
    x, y = _paired_arrays(a, b)
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise UnlockLensError("mcnemar_exact needs binary (0/1 or bool) outcomes")
    only_a = int(((x == 1) & (y == 0)).sum())
    only_b = int(((x == 0) & (y == 1)).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def confusion_counts(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[tuple[Hashable, Hashable], int]:
    """How often each (truth, predicted) pair of labels occurs (pairs that never occur are absent)."""
    if len(truth) != len(predicted):
        raise UnlockLensError(f"{len(truth)} labels against {len(predicted)} predictions: label the same items")
    return dict(Counter(zip(truth, predicted, strict=True)))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two labellings of the same items (scikit-learn's
    ``cohen_kappa_score``): (p_o - p_e) / (1 - p_e); NaN when p_e = 1 (both give every item one
    and the same label)."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b):
        raise UnlockLensError(f"{len(a)} labels against {len(b)} predictions: label the same items")
    if len(a) == 0:
        raise UnlockLensError("no items to compare: pass at least one label")
    if len(set(a) | set(b)) == 1:
        return float("nan")
    return float(cohen_kappa_score([str(x) for x in a], [str(x) for x in b]))
