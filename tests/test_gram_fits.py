"""Fits from d x d sufficient statistics (align/stats.py) equal the dense fits, and oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA
from sklearn.linear_model import Ridge

from unlock_lens.align import (
    ALIGNMENT_METHODS,
    GramStats,
    fit_alignment,
    fit_from_stats,
    fit_layer_maps_from_stats,
    stats_metrics,
)
from unlock_lens.align.layers import AlignSpec, LayerPairing, fit_layer_maps
from unlock_lens.errors import UnlockLensError

N, D_S, D_T, K = 600, 40, 48, 8

#: (method, centered, kwargs) for every registered method and option that changes the maths
CASES = [
    ("svd", False, {}),
    ("svd", True, {}),
    ("procrustes", False, {}),
    ("procrustes", True, {}),
    ("cca", True, {}),
    ("cca", True, {"scale_by_correlation": True}),
    ("cca", True, {"eps": 1e-2}),
    ("ridge", True, {}),
    ("ridge", True, {"alpha": 5000.0}),
    ("identity", False, {}),
    ("identity", True, {}),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = N, d_s: int = D_S, d_t: int = D_T, seed: int = 0):
    """Low-rank (12) plus noise, with a strong mean (as activations have), float32."""
    g = _gen(seed)
    Z = torch.randn(n, 12, generator=g) * torch.linspace(4.0, 1.0, 12)
    X = Z @ torch.randn(12, d_s, generator=g) + 0.3 * torch.randn(n, d_s, generator=g)
    Y = Z @ torch.randn(12, d_t, generator=g) + 0.3 * torch.randn(n, d_t, generator=g)
    return X + 2 * torch.randn(d_s, generator=g), Y + 2 * torch.randn(d_t, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def test_cases_cover_every_registered_method() -> None:
    assert {m for m, _, _ in CASES} == set(ALIGNMENT_METHODS)


@pytest.mark.parametrize(("method", "centered", "kwargs"), CASES)
def test_stats_fit_equals_dense_fit(method: str, centered: bool, kwargs: dict) -> None:
    X, Y = _data()
    if method == "identity":
        Y = X + 0.1 * torch.randn(N, D_S, generator=_gen(1))
    dense = fit_alignment(X, Y, method=method, rank=K, centered=centered, **kwargs)
    ours = fit_from_stats(GramStats.from_dense(X, Y, chunk=128), method, K, centered, **kwargs)
    # The dense fits run in float32. Ridge's float32 solve errs by ~cond * 6e-8: with the default
    # alpha (condition number ~900 here) the dense W is itself 5e-5 off the float64 answer, which
    # ours matches to 3e-8 (test_ridge_matches_sklearn); alpha=5000 (condition ~110) gives 7e-6.
    tol = 1e-4 if method == "ridge" and "alpha" not in kwargs else 1e-5
    assert _rel(ours.weight, dense.weight) < tol
    torch.testing.assert_close(ours.source_mean, dense.source_mean, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.target_mean, dense.target_mean, atol=1e-5, rtol=1e-6)
    v = torch.randn(5, X.shape[1], generator=_gen(2))
    assert _rel(ours.transform(v), dense.transform(v)) < tol
    assert (ours.method, ours.rank, ours.centered) == (dense.method, dense.rank, dense.centered)
    assert ours.metrics.keys() == dense.metrics.keys()
    for name, value in dense.metrics.items():
        assert ours.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert ours.extras.keys() == dense.extras.keys()
    for name, value in dense.extras.items():
        torch.testing.assert_close(ours.extras[name], value, atol=1e-5, rtol=1e-5)
    assert all(t.dtype == torch.float32 for t in ours.to_tensors().values())


@pytest.mark.parametrize("method", ["svd", "procrustes", "cca", "ridge"])
def test_stats_fit_equals_dense_fit_with_fewer_rows_than_dims(method: str) -> None:
    """n < d: the dense fits take their n x n Gram / dual paths; the d x d statistics agree."""
    X, Y = _data(n=30, d_s=80, d_t=72, seed=3)
    dense = fit_alignment(X, Y, method=method, rank=6)
    ours = fit_from_stats(GramStats.from_dense(X, Y), method, 6)
    assert _rel(ours.weight, dense.weight) < 1e-4


@pytest.mark.parametrize("centered", [False, True])
def test_svd_rank_above_the_source_rank_drops_null_directions_like_pinv(centered: bool) -> None:
    """Source of exact rank 5, k = 8: pinv's cutoff zeroes the 3 null directions in both fits."""
    X, Y = _data()
    X = X @ torch.linalg.qr(torch.randn(D_S, 5, generator=_gen(13)))[0] @ torch.randn(5, D_S, generator=_gen(14))
    if centered:
        X = X - X.mean(0)  # else the mean adds a 6th direction to the centred rank
    dense = fit_alignment(X, Y, method="svd", rank=K, centered=centered)
    ours = fit_from_stats(GramStats.from_dense(X, Y), "svd", K, centered)
    assert _rel(ours.weight, dense.weight) < 1e-5


def test_chunked_and_merged_stats_equal_one_pass() -> None:
    X, Y = _data()
    whole = GramStats.from_dense(X, Y, chunk=N)
    streamed = GramStats.empty(D_S, D_T)
    for i in range(0, N, 77):
        streamed.update(X[i : i + 77], Y[i : i + 77].double())  # mixed input dtypes
    left = GramStats.from_dense(X[:250], Y[:250])
    right = GramStats.from_dense(X[250:], Y[250:])
    merged = left.merge(right)
    assert left.n == 250 and right.n == N - 250  # merge leaves its inputs alone
    for other in (streamed, merged, right.merge(left)):
        assert other.n == whole.n == N
        for name in ("sum_src", "sum_tgt", "src_src", "src_tgt", "tgt_tgt"):
            torch.testing.assert_close(getattr(other, name), getattr(whole, name), rtol=1e-12, atol=1e-9)
    # and the raw sums are what they claim to be
    X64, Y64 = X.double(), Y.double()
    torch.testing.assert_close(whole.src_tgt, X64.T @ Y64, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(whole.gram_src(True), (X64 - X64.mean(0)).T @ (X64 - X64.mean(0)),
                               rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("method", ["svd", "ridge", "cca"])
def test_planted_map_is_recovered(method: str) -> None:
    g = _gen(4)
    r = 6
    P = torch.linalg.qr(torch.randn(D_S, r, generator=g))[0].T  # r x D_S, orthonormal rows
    X = (torch.randn(2000, r, generator=g) * torch.linspace(3, 1, r)) @ P + 1e-3 * torch.randn(
        2000, D_S, generator=g
    )
    A = torch.randn(D_S, D_T, generator=g) / math.sqrt(D_S)
    Y = X @ A + 1e-3 * torch.randn(2000, D_T, generator=g)
    stats = GramStats.empty(D_S, D_T)
    for i in range(0, 2000, 500):
        stats.update(X[i : i + 500], Y[i : i + 500])
    fitted = fit_from_stats(stats, method, r)
    v = torch.randn(20, r, generator=g) @ P  # directions in X's row space
    cos = torch.nn.functional.cosine_similarity(fitted.transform(v), v @ A, dim=-1)
    assert cos.min() > 0.999, cos
    assert fitted.metrics["train_r2"] > 0.999


def test_svd_matches_float64_numpy_oracle() -> None:
    """svd's maths re-derived independently on float64 rows: V from numpy's SVD, pinv core."""
    X, Y = _data(seed=5)
    Xd, Yd = X.double().numpy(), Y.double().numpy()
    Xc, Yc = Xd - Xd.mean(0), Yd - Yd.mean(0)
    Vs = np.linalg.svd(Xc, full_matrices=False)[2][:K].T
    Vt = np.linalg.svd(Yc, full_matrices=False)[2][:K].T
    W = Vs @ np.linalg.pinv(Xc @ Vs) @ (Yc @ Vt) @ Vt.T
    ours = fit_from_stats(GramStats.from_dense(X, Y), "svd", K, centered=True)
    assert _rel(ours.weight, torch.from_numpy(W)) < 1e-6


@pytest.mark.parametrize("alpha", [None, 3.0])
def test_ridge_matches_sklearn(alpha: float | None) -> None:
    X, Y = _data(seed=6)
    ours = fit_from_stats(GramStats.from_dense(X, Y), "ridge", 1, alpha=alpha)
    ref = Ridge(alpha=ours.metrics["alpha"], fit_intercept=True, solver="cholesky")
    ref.fit(X.double().numpy(), Y.double().numpy())
    assert _rel(ours.weight, torch.from_numpy(ref.coef_.T)) < 1e-6
    pred = ours.predict(X[:10]).double().numpy()
    np.testing.assert_allclose(pred, ref.predict(X[:10].double().numpy()), rtol=1e-5, atol=1e-4)
    if alpha is None:  # the default: 1% of the mean per-dimension centred energy
        Xc = X.double() - X.double().mean(0)
        assert ours.metrics["alpha"] == pytest.approx(1e-2 * float(Xc.square().sum()) / D_S, rel=1e-10)


def test_cca_correlations_match_sklearn() -> None:
    """At full rank the canonical correlations are sklearn's (as in test_align for the dense fit)."""
    g = _gen(7)
    n, d = 2000, 5
    Z = torch.randn(n, d, generator=g)
    X = Z @ torch.randn(d, d, generator=g) + torch.randn(n, d, generator=g) * torch.linspace(0.3, 2, d)
    Y = Z @ torch.randn(d, d, generator=g) + torch.randn(n, d, generator=g) * torch.linspace(3, 0.2, d)
    rho = fit_from_stats(GramStats.from_dense(X, Y), "cca", d).extras["canonical_correlations"]
    cca = CCA(n_components=d, scale=False, max_iter=5000, tol=1e-10)
    xs, ys = cca.fit(X.double().numpy(), Y.double().numpy()).transform(X.double().numpy(), Y.double().numpy())
    ref = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(d)]
    np.testing.assert_allclose(rho.double().numpy(), ref, atol=1e-3)


def test_stats_metrics_equal_row_metrics_on_heldout_rows() -> None:
    """The suggested replacement for holdout: score a map on a second GramStats."""
    X, Y = _data(seed=8)
    fitted = fit_from_stats(GramStats.from_dense(X[:400], Y[:400]), "svd", K, centered=True)
    held = stats_metrics(fitted, GramStats.from_dense(X[400:], Y[400:]))
    assert held["relative_error"] == pytest.approx(fitted.relative_error(X[400:], Y[400:]), rel=1e-5)
    assert held["r2"] == pytest.approx(fitted.r2(X[400:], Y[400:]), rel=1e-5)
    train = stats_metrics(fitted, GramStats.from_dense(X[:400], Y[:400]))
    assert train["r2"] == pytest.approx(fitted.r2(X[:400], Y[:400]), rel=1e-5)
    assert abs(held["r2"] - train["r2"]) > 1e-3  # two row sets, two scores


@pytest.mark.parametrize("method", ["svd", "cca", "ridge"])
def test_layer_maps_from_stats_equal_dense_layer_maps(method: str) -> None:
    g = _gen(9)
    n = 300
    H_src = torch.randn(n, 3, 24, generator=g) + torch.randn(n, 1, 24, generator=g) * 3
    H_tgt = H_src[:, [0, 0, 2, 2]].repeat(1, 1, 2) @ torch.randn(48, 32, generator=g)
    H_tgt = H_tgt + 0.1 * torch.randn(n, 4, 32, generator=g)
    pairing = LayerPairing.by_depth(3, 4)  # targets 0..3 <- sources 0, 0, 1, 2
    spec = AlignSpec(method, rank=5, centered=True)
    s_layers = pairing.source_layers
    stats = {
        t: GramStats.from_dense(H_src[:, s_layers.index(s)], H_tgt[:, t], chunk=100)
        for t, s in pairing.source_of.items()
    }
    ours = fit_layer_maps_from_stats(stats, pairing, spec)
    dense = fit_layer_maps(H_src, H_tgt, pairing, spec)
    assert sorted(ours) == sorted(dense) == [0, 1, 2, 3]
    for t in dense:
        assert (ours[t].source_layer, ours[t].target_layer) == (dense[t].source_layer, t)
        assert _rel(ours[t].weight, dense[t].weight) < 1e-4


def test_layer_maps_from_stats_clamps_and_refuses() -> None:
    X, Y = _data(n=20, d_s=10, d_t=12)
    stats = {0: GramStats.from_dense(X, Y)}
    pairing = LayerPairing({0: 0})
    with pytest.warns(UserWarning, match="clamped to 10"):
        maps = fit_layer_maps_from_stats(stats, pairing, AlignSpec("svd", rank=16, centered=False,
                                                                   clamp_rank=True))
    assert maps[0].rank == 10
    with pytest.raises(UnlockLensError, match="holdout"):
        fit_layer_maps_from_stats(stats, pairing, AlignSpec("svd", rank=4, centered=False, holdout=0.2))
    with pytest.raises(UnlockLensError, match=r"target layers \[1\]"):
        fit_layer_maps_from_stats(stats, LayerPairing({0: 0, 1: 0}), AlignSpec("svd", rank=4))
    with pytest.raises(UnlockLensError, match="d_src=10"):
        fit_layer_maps_from_stats(stats, pairing, AlignSpec("svd", rank=16, centered=False))
    # the authors' per-side clamp gives ranks 10 and 12 here, which a fit from statistics cannot take
    with pytest.raises(UnlockLensError, match="ranks 10 and 12.*fit from rows"), pytest.warns(UserWarning):
        fit_layer_maps_from_stats(stats, pairing, AlignSpec("svd", rank=16, centered=False, clamp_rank=True,
                                                            rank_clamp="per_side"))


def _bad_update(case: str) -> tuple[GramStats, tuple, str]:
    g = _gen(10)
    X, Y = torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g)
    nan = X.clone()
    nan[0, 0], nan[3, 2] = float("nan"), float("inf")
    stats = GramStats.empty(6, 4)
    return stats, {
        "mismatched_n": ((X, Y[:9]), "mismatched n"),
        "wrong_width": ((X[:, :5], Y), r"\[rows, 6\]"),
        "one_d": ((X[:, 0], Y), r"\[rows, 6\]"),
        "nan_inf": ((nan, Y), "X_src has 2 non-finite"),
        "complex": ((X.to(torch.complex64), Y), "real-valued"),
    }[case]


@pytest.mark.parametrize("case", ["mismatched_n", "wrong_width", "one_d", "nan_inf", "complex"])
def test_bad_rows_raise_clear_error_and_leave_stats_unchanged(case: str) -> None:
    stats, (args, fragment) = _bad_update(case)
    with pytest.raises(UnlockLensError, match=fragment):
        stats.update(*args)
    assert stats.n == 0 and not stats.src_src.any()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "svd", "rank": 5}, "d_tgt=4"),
        ({"method": "svd", "rank": 0}, "rank must be >= 1"),
        ({"method": "svd", "rank": 2.0}, "rank must be an int"),
        ({"method": "magic"}, "known methods: cca, identity"),
        ({"method": "identity"}, "d_src=6 != d_tgt=4"),
        ({"method": "svd", "rank": 2, "holdout": 0.2}, "holdout=0.2 needs the rows"),
    ],
)
def test_bad_fit_arguments_raise_clear_error(kwargs: dict, fragment: str) -> None:
    g = _gen(11)
    stats = GramStats.from_dense(torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g))
    with pytest.raises(UnlockLensError, match=fragment):
        fit_from_stats(stats, **kwargs)


def test_rank_above_n_and_too_few_rows_are_refused() -> None:
    g = _gen(12)
    X, Y = torch.randn(3, 6, generator=g), torch.randn(3, 4, generator=g)
    with pytest.raises(UnlockLensError, match="n_train=3"):
        fit_from_stats(GramStats.from_dense(X, Y), "svd", 4)
    with pytest.raises(UnlockLensError, match="at least 2"):
        fit_from_stats(GramStats.from_dense(X[:1], Y[:1]), "svd", 1)
    with pytest.raises(UnlockLensError, match="cannot merge"):
        GramStats.empty(6, 4).merge(GramStats.empty(4, 6))
    assert fit_from_stats(GramStats.from_dense(X, Y), "ridge", 50).rank == 4  # ridge ignores rank
