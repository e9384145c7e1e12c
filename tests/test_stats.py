import numpy as np
import pytest
from scipy.stats import binomtest, norm

from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.stats import mcnemar_exact, paired_bootstrap_diff, wilson_interval

Z95 = float(norm.ppf(0.975))


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (37, 200),
                                      (199, 200), (512, 1000)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n, z=Z95)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert lo <= k / n <= hi


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(UnlockLensError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def _pairs(b: int, c: int, same_right: int = 4, same_wrong: int = 3):
    a = [1] * b + [0] * c + [1] * same_right + [0] * same_wrong
    other = [0] * b + [1] * c + [1] * same_right + [0] * same_wrong
    return a, other


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (0, 5), (3, 3), (7, 2), (2, 11), (40, 25),
                                      (120, 90)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    a, other = _pairs(b, c)
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(a, other) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert mcnemar_exact(other, a) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_refuses_non_binary_and_unpaired():
    with pytest.raises(UnlockLensError, match="binary"):
        mcnemar_exact([0.5, 1], [0, 1])
    with pytest.raises(UnlockLensError, match="equal length"):
        mcnemar_exact([0, 1], [0, 1, 1])


def test_bootstrap_deterministic_and_covers_true_difference():
    rng = np.random.default_rng(123)
    n, p_a, p_b = 400, 0.62, 0.45
    u = rng.random(n)  # shared latent difficulty: outcomes are positively correlated pairs
    a, b = (u < p_a).astype(int), (u < p_b).astype(int)
    first = paired_bootstrap_diff(a, b, n_boot=2000, seed=7)
    assert first == paired_bootstrap_diff(a, b, n_boot=2000, seed=7)
    assert first != paired_bootstrap_diff(a, b, n_boot=2000, seed=8)
    assert first.diff == pytest.approx(a.mean() - b.mean())
    assert first.lo <= first.diff <= first.hi
    assert first.lo <= p_a - p_b <= first.hi
    assert first.hi - first.lo < 0.15


def test_bootstrap_coverage_over_replicates():
    rng = np.random.default_rng(0)
    covered = 0
    for rep in range(100):
        u = rng.random(120)
        a, b = (u < 0.5).astype(int), (u < 0.4).astype(int)
        ci = paired_bootstrap_diff(a, b, n_boot=500, seed=rep)
        covered += ci.lo <= 0.1 <= ci.hi
    assert covered >= 85  # nominal 95%


def test_bootstrap_bad_input():
    with pytest.raises(UnlockLensError, match="empty"):
        paired_bootstrap_diff([], [])
    with pytest.raises(UnlockLensError, match="n_boot"):
        paired_bootstrap_diff([1], [0], n_boot=0)
