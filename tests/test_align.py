"""Tests for unlock_lens.align: planted maps, oracles (scipy, sklearn), metrics, I/O, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.cross_decomposition import CCA
from sklearn.metrics import r2_score

from unlock_lens.align import (
    ALIGNMENT_METHODS,
    LayerMap,
    fit_alignment,
    fit_svd,
    procrustes_rotation,
)
from unlock_lens.errors import ArtifactError, UnlockLensError

N, D_S, D_T, R = 400, 48, 32, 6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal_rows(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return q.T  # k x d, orthonormal rows


def _planted(orthogonal: bool, seed: int = 0):
    """X_s of (near) rank R; X_t = X_s A + noise with rank(A) = R. Returns X_s, X_t, A, P_s."""
    g = _gen(seed)
    Z = torch.randn(N, R, generator=g) * torch.linspace(3.0, 1.0, R)
    if orthogonal:  # A = s P_s^T Q P_t: a scaled orthogonal map between R-dim subspaces
        P_s = _orthonormal_rows(R, D_S, g)
        P_t = _orthonormal_rows(R, D_T, g)
        Q, _ = torch.linalg.qr(torch.randn(R, R, generator=g))
        A = 2.5 * P_s.T @ Q @ P_t
    else:
        P_s = torch.randn(R, D_S, generator=g)
        A = torch.randn(D_S, R, generator=g) @ torch.randn(R, D_T, generator=g) / math.sqrt(D_S)
    X_s = Z @ P_s + 1e-3 * torch.randn(N, D_S, generator=g)
    X_t = X_s @ A + 1e-3 * torch.randn(N, D_T, generator=g)
    return X_s, X_t, A, P_s


@pytest.mark.parametrize(
    ("method", "orthogonal"),
    [("svd", False), ("svd", True), ("ridge", False), ("procrustes", True), ("cca", True)],
)
def test_planted_map_is_recovered(method: str, orthogonal: bool) -> None:
    X_s, X_t, A, P_s = _planted(orthogonal)
    fitted = fit_alignment(X_s, X_t, method=method, rank=R)
    v = torch.randn(20, R, generator=_gen(1)) @ P_s  # directions in X_s's row space
    cos = torch.nn.functional.cosine_similarity(fitted.transform(v), v @ A, dim=-1)
    assert cos.min() >= 0.99, cos
    assert fitted.metrics["train_r2"] > 0.99
    assert fitted.d_src == D_S and fitted.d_tgt == D_T


def test_procrustes_fails_on_non_orthogonal_relation() -> None:
    """Control: a general (non-orthogonal) planted map is NOT recovered by Procrustes."""
    X_s, X_t, A, P_s = _planted(orthogonal=False)
    fitted = fit_alignment(X_s, X_t, method="procrustes", rank=R)
    v = torch.randn(20, R, generator=_gen(1)) @ P_s
    cos = torch.nn.functional.cosine_similarity(fitted.transform(v), v @ A, dim=-1)
    assert cos.min() < 0.99


def test_svd_source_equals_target_is_projection() -> None:
    H = torch.randn(50, 20, generator=_gen(2)) * torch.linspace(5.0, 0.5, 20)
    k = 5
    fitted = fit_alignment(H, H, method="svd", rank=k)
    V = torch.linalg.svd(H.double(), full_matrices=False).Vh[:k].T
    W = fitted.weight
    torch.testing.assert_close(W.double(), V @ V.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(W @ W, W, atol=1e-5, rtol=0)


def test_transform_and_predict_consistent_with_weight() -> None:
    X_s, X_t, _, _ = _planted(False)
    fitted = fit_alignment(X_s, X_t, method="svd", rank=R, centered=True)
    v = torch.randn(3, 4, D_S, generator=_gen(3))
    torch.testing.assert_close(fitted.transform(v), v @ fitted.weight, atol=1e-4, rtol=1e-4)
    pred = fitted.predict(X_s[:5])
    ref = (X_s[:5] - fitted.source_mean) @ fitted.weight + fitted.target_mean
    torch.testing.assert_close(pred, ref, atol=1e-4, rtol=1e-4)
    assert fitted.source_mean.abs().max() > 0  # centred fit stores its means
    with pytest.raises(UnlockLensError, match="d_src=48"):
        fitted.transform(torch.randn(D_T))


def test_procrustes_matches_scipy() -> None:
    g = _gen(4)
    A = torch.randn(300, 8, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    B = 1.7 * A @ Q + 0.3 * torch.randn(300, 8, generator=g)
    R_ours, scale = procrustes_rotation(A, B)
    R_ref, sigma_sum = orthogonal_procrustes(A.double().numpy(), B.double().numpy())
    np.testing.assert_allclose(R_ours.double().numpy(), R_ref, atol=1e-5)
    assert scale == pytest.approx(sigma_sum / float(A.double().square().sum()), rel=1e-5)

    # through fit_alignment: core / scale is scipy's R on the rank-k coordinates
    X_s, X_t, _, _ = _planted(True)
    fitted = fit_alignment(X_s, X_t, method="procrustes", rank=R)
    a = (X_s @ fitted.source_basis).double().numpy()
    b = (X_t @ fitted.target_basis).double().numpy()
    R_fit = (fitted.core / fitted.metrics["scale"]).double().numpy()
    np.testing.assert_allclose(R_fit, orthogonal_procrustes(a, b)[0], atol=1e-5)


def test_cca_matches_sklearn() -> None:
    g = _gen(5)
    n, d = 2000, 5
    Z = torch.randn(n, d, generator=g)
    X = Z @ torch.randn(d, d, generator=g) + torch.randn(n, d, generator=g) * torch.linspace(
        0.3, 2.0, d
    )
    Y = Z @ torch.randn(d, d, generator=g) + torch.randn(n, d, generator=g) * torch.linspace(
        3.0, 0.2, d
    )
    fitted = fit_alignment(X, Y, method="cca", rank=d)
    rho = fitted.extras["canonical_correlations"]
    cca = CCA(n_components=d, scale=False, max_iter=5000, tol=1e-10)
    xs, ys = cca.fit(X.double().numpy(), Y.double().numpy()).transform(
        X.double().numpy(), Y.double().numpy()
    )
    ref = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(d)]
    np.testing.assert_allclose(rho.double().numpy(), ref, atol=1e-3)
    assert fitted.centered and rho.shape == (d,)


def test_ridge_dual_form_matches_primal() -> None:
    g = _gen(6)
    X, Y = torch.randn(20, 30, generator=g), torch.randn(20, 7, generator=g)  # n < d_src
    fitted = fit_alignment(X, Y, method="ridge", rank=1, alpha=0.5)
    Xc, Yc = (X - X.mean(0)).double(), (Y - Y.mean(0)).double()
    W = torch.linalg.solve(Xc.T @ Xc + 0.5 * torch.eye(30, dtype=torch.float64), Xc.T @ Yc)
    torch.testing.assert_close(fitted.weight.double(), W, atol=1e-4, rtol=1e-4)
    assert fitted.rank == 7 and fitted.metrics["alpha"] == 0.5


def test_relative_error_and_r2_hand_checked() -> None:
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ident = fit_alignment(X, X, method="identity")
    assert ident.relative_error(X, X) == 0.0
    assert ident.r2(X, X) == 1.0
    # predicting X for a target 2X: ||X||/||2X|| = 0.5; SS_res = 4, SS_tot = 4 * 4/3 -> R^2 = 0.25
    assert ident.relative_error(X, 2 * X) == pytest.approx(0.5, abs=1e-6)
    assert ident.r2(X, 2 * X) == pytest.approx(0.25, abs=1e-6)
    # pooled R^2 == sklearn's variance-weighted multi-output R^2
    X_s, X_t, _, _ = _planted(False)
    Y = X_t + torch.randn(N, D_T, generator=_gen(7))
    fitted = fit_alignment(X_s, Y, rank=3)
    ref = r2_score(Y.numpy(), fitted.predict(X_s).numpy(), multioutput="variance_weighted")
    assert fitted.metrics["train_r2"] == pytest.approx(ref, abs=1e-4)


def test_holdout_metrics_recorded_and_seeded() -> None:
    X_s, X_t, _, _ = _planted(False)
    no_hold = fit_alignment(X_s, X_t, rank=R)
    assert "heldout_r2" not in no_hold.metrics and "train_relative_error" in no_hold.metrics
    a = fit_alignment(X_s, X_t, rank=R, holdout=0.25, seed=3)
    b = fit_alignment(X_s, X_t, rank=R, holdout=0.25, seed=3)
    c = fit_alignment(X_s, X_t, rank=R, holdout=0.25, seed=4)
    assert a.metrics["n_heldout"] == 100 and a.metrics["n_train"] == 300
    assert a.metrics["heldout_r2"] > 0.99 and a.metrics["heldout_relative_error"] < 0.05
    assert a.metrics == b.metrics
    assert a.metrics["heldout_relative_error"] != c.metrics["heldout_relative_error"]


@pytest.mark.parametrize("method", sorted(ALIGNMENT_METHODS))
def test_save_load_round_trip_bit_exact(method: str, tmp_path) -> None:
    X = torch.randn(60, 12, generator=_gen(8))
    Y = X @ torch.randn(12, 12, generator=_gen(9))
    fitted = fit_alignment(X, Y, method=method, rank=4, holdout=0.2, source_layer=3, target_layer=5)
    path = fitted.save(tmp_path / f"{method}.safetensors")
    loaded = LayerMap.load(path)
    t0, m0 = fitted.to_tensors_and_meta()
    t1, m1 = loaded.to_tensors_and_meta()
    assert t0.keys() == t1.keys()
    for name in t0:
        assert torch.equal(t0[name], t1[name]) and t0[name].dtype == t1[name].dtype, name
    assert m0 == m1 and loaded.source_layer == 3 and loaded.target_layer == 5
    assert loaded.extras.keys() == fitted.extras.keys()


def test_tampered_file_is_detected(tmp_path) -> None:
    X = torch.randn(30, 6, generator=_gen(10))
    path = fit_alignment(X, X, rank=3).save(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    raw[8 + header_len + 5] ^= 0xFF  # a byte inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="hash"):
        LayerMap.load(path)


def _bad(name: str):
    g = _gen(11)
    X, Y = torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g)
    nan_x = X.clone()
    nan_x[0, 0], nan_x[3, 2] = float("nan"), float("inf")
    cases = {
        "mismatched_n": ((X, Y[:9]), {}, "mismatched n"),
        "rank_gt_n": ((X[:3], Y[:3]), {"rank": 4}, "n_train=3"),
        "rank_gt_d": ((X, Y), {"rank": 5}, "d_tgt=4"),
        "rank_zero": ((X, Y), {"rank": 0}, "rank must be >= 1"),
        "nan_inf": ((nan_x, Y), {"rank": 2}, "X_src has 2 non-finite"),
        "unknown_method": ((X, Y), {"method": "magic"}, "known methods: cca, identity"),
        "identity_dims": ((X, Y), {"method": "identity"}, "d_src=6 != d_tgt=4"),
        "one_d": ((X[:, 0], Y), {"rank": 1}, "X_src must be 2-D"),
        "n_one": ((X[:1], Y[:1]), {"rank": 1}, "at least 2"),
        "target_rank_method": ((X, Y), {"method": "procrustes", "rank": 2, "target_rank": 3},
                               "target_rank .* is for method 'svd'"),
        "target_rank_gt_d": ((X, Y), {"rank": 6, "target_rank": 5}, r"target_rank=5 exceeds min\(n_train=10, d_tgt=4\)"),
    }
    return cases[name]


@pytest.mark.parametrize(
    "case",
    [
        "mismatched_n",
        "rank_gt_n",
        "rank_gt_d",
        "rank_zero",
        "nan_inf",
        "unknown_method",
        "identity_dims",
        "one_d",
        "n_one",
        "target_rank_method",
        "target_rank_gt_d",
    ],
)
def test_bad_input_raises_clear_error(case: str) -> None:
    args, kwargs, fragment = _bad(case)
    with pytest.raises(UnlockLensError, match=fragment):
        fit_alignment(*args, **kwargs)


def test_per_side_ranks_at_full_width_are_least_squares() -> None:
    """The authors' per-side clamp can leave each side its full width: k_s = d_s = 6, k_t = d_t = 4
    (one joint k would be 4); the map is then the least-squares solution of X W = Y (NumPy)."""
    g = _gen(12)
    X, Y = torch.randn(30, 6, generator=g), torch.randn(30, 4, generator=g)
    m = fit_alignment(X, Y, rank=6, target_rank=4)
    assert tuple(m.core.shape) == (6, 4) and m.metrics["target_rank"] == 4
    expected = np.linalg.lstsq(X.double().numpy(), Y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(m.weight.double().numpy(), expected, atol=1e-5)
    assert not torch.allclose(fit_alignment(X, Y, rank=4).weight, m.weight, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["svd", "procrustes", "cca", "ridge"])
def test_half_precision_inputs_give_float32(dtype: torch.dtype, method: str) -> None:
    X_s, X_t, _, _ = _planted(False)
    fitted = fit_alignment(X_s.to(dtype), X_t.to(dtype), method=method, rank=R)
    assert all(t.dtype == torch.float32 for t in fitted.to_tensors().values())
    assert fitted.transform(torch.randn(D_S).to(dtype)).dtype == torch.float32
    assert math.isfinite(fitted.metrics["train_r2"])


def test_direct_fit_function_matches_entry_point() -> None:
    X_s, X_t, _, _ = _planted(False)
    direct = fit_svd(X_s, X_t, R)
    via = fit_alignment(X_s, X_t, method="svd", rank=R)
    assert torch.equal(direct.weight, via.weight)
