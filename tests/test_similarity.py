"""Similarity diagnostics on synthetic data with known answers."""

import math

import numpy as np
import pytest
import torch

from unlock_lens.align import fit_alignment
from unlock_lens.diagnostics.similarity import (
    alignment_sweep,
    alignment_table,
    cca_spectrum,
    cca_table,
    cka_matrix,
    energy_in_subspace,
    key_cosines,
    linear_cka,
    mapped_subspace_angles,
    principal_angle_table,
    principal_angles,
    subspace_angles,
    top_subspace,
)
from unlock_lens.errors import UnlockLensError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def random_rotation(d, seed=0):
    q, r = torch.linalg.qr(randn(d, d, seed=seed))
    return q * torch.sign(torch.diagonal(r))


# ---- numpy references (Kornblith et al. 2019, gram form with explicit centring matrix) ----


def np_cka(X, Y):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H) / (n - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def np_center_gram_unbiased(G):
    """Kornblith et al.'s ``center_gram(gram, unbiased=True)``."""
    G = G.copy()
    n = G.shape[0]
    np.fill_diagonal(G, 0)
    means = G.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    G -= means[:, None]
    G -= means[None, :]
    np.fill_diagonal(G, 0)
    return G


def np_cka_debiased(X, Y):
    K = np_center_gram_unbiased(np.asarray(X, np.float64) @ np.asarray(X, np.float64).T)
    L = np_center_gram_unbiased(np.asarray(Y, np.float64) @ np.asarray(Y, np.float64).T)
    return (K.ravel() @ L.ravel()) / (np.linalg.norm(K) * np.linalg.norm(L))


# ---- principal angles --------------------------------------------------------------------


def test_principal_angles_identical_and_reparametrised_span_is_zero():
    A = randn(50, 5)
    mix = randn(5, 5, seed=1)  # another basis of the same span
    angles = principal_angles(A, A @ mix)
    assert angles.shape == (5,)
    assert float(angles.max()) < 1e-7


def test_principal_angles_known_values():
    # span{e1, e2} vs span{e1, cos(t) e2 + sin(t) e3}: angles 0 and t
    t = 0.3
    A = torch.eye(4, dtype=torch.float64)[:, :2]
    B = torch.zeros(4, 2, dtype=torch.float64)
    B[0, 0] = 1
    B[1, 1], B[2, 1] = math.cos(t), math.sin(t)
    torch.testing.assert_close(principal_angles(A, B), torch.tensor([0.0, t], dtype=torch.float64))
    # orthogonal subspaces: pi/2
    C = torch.eye(4, dtype=torch.float64)[:, 2:]
    torch.testing.assert_close(principal_angles(A, C), torch.full((2,), math.pi / 2, dtype=torch.float64))


def test_principal_angles_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    A, B = randn(30, 4, seed=2), randn(30, 6, seed=3)
    ours = principal_angles(A, B).numpy()
    ref = np.sort(scipy_linalg.subspace_angles(A.numpy(), B.numpy()))
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_principal_angles_rejects_mismatched_spaces():
    with pytest.raises(UnlockLensError, match="different spaces"):
        principal_angles(randn(5, 2), randn(6, 2))


def test_subspace_angles_of_activations():
    # two samples of data with the same 3-d signal subspace (tiny noise): angles ~ 0
    basis = randn(3, 40, seed=4)
    Xa = randn(200, 3, seed=5) @ basis + 1e-6 * randn(200, 40, seed=6)
    Xb = randn(150, 3, seed=7) @ basis + 1e-6 * randn(150, 40, seed=8)
    assert float(subspace_angles(Xa, Xb, 3).max()) < 1e-4
    # independent random data in 40-d: top-3 subspaces far apart
    assert float(subspace_angles(randn(200, 40, seed=9), randn(200, 40, seed=10), 3).min()) > 0.3


def test_mapped_subspace_angles_zero_for_an_exact_linear_map():
    n, ds, dt, k = 200, 12, 20, 4
    Z = randn(n, k, seed=11)
    Xs = Z @ randn(k, ds, seed=12)
    Xt = Xs @ randn(ds, dt, seed=13)  # target = exact linear image of the source
    lm = fit_alignment(Xs.float(), Xt.float(), method="ridge")
    angles = mapped_subspace_angles(lm, Xs, Xt, k)
    assert angles.shape == (k,)
    assert float(angles.max()) < 1e-2  # float32 map
    # an unrelated target: large angles
    Xt_rand = randn(n, dt, seed=14) * 3
    lm2 = fit_alignment(Xs.float(), Xt_rand.float(), method="ridge")
    assert float(mapped_subspace_angles(lm2, Xs, Xt_rand, k).max()) > 0.5
    # documented caveat: an svd map's image is the target's top-k subspace by construction
    lm3 = fit_alignment(Xs.float(), Xt_rand.float(), method="svd", rank=k, centered=True)
    assert float(mapped_subspace_angles(lm3, Xs, Xt_rand, k).max()) < 1e-3


def test_energy_in_subspace():
    basis = torch.eye(5, dtype=torch.float64)[:, :2] * 3.0  # span{e1, e2}, not orthonormal
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0], [0, 0, 0, 0, 1.0]],
                     dtype=torch.float64)
    torch.testing.assert_close(energy_in_subspace(v, basis),
                               torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))


def test_principal_angle_table_layout():
    H_s, H_t = randn(40, 2, 8, seed=15), randn(40, 3, 10, seed=16)
    maps = {t: fit_alignment(H_s[:, t % 2].float(), H_t[:, t].float(), rank=3, source_layer=t % 2,
                             target_layer=t) for t in range(3)}
    frame = principal_angle_table(H_s, H_t, maps, 3)
    assert list(frame.columns) == ["source_layer", "target_layer", "index", "angle", "angle_deg"]
    assert len(frame) == 9 and sorted(frame.target_layer.unique()) == [0, 1, 2]
    np.testing.assert_allclose(np.degrees(frame.angle), frame.angle_deg)


def test_top_subspace_validates_k():
    with pytest.raises(UnlockLensError, match="k=9"):
        top_subspace(randn(8, 5), 9)


# ---- CKA ---------------------------------------------------------------------------------


def test_cka_identical_is_one():
    X = randn(60, 30)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X, debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_rotation_scale_and_shift():
    X = randn(80, 16, seed=1)
    Y = 7.5 * X @ random_rotation(16, seed=2) + 3.0  # rotated, scaled, shifted copy
    assert linear_cka(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(1.0, abs=1e-10)
    # into a wider space (orthonormal embedding 16 -> 40) also keeps CKA 1
    Q = random_rotation(40, seed=3)[:, :16]
    assert linear_cka(X, X @ Q.T) == pytest.approx(1.0, abs=1e-10)
    # but not invariant to a non-isotropic scaling
    assert linear_cka(X, X * torch.linspace(0.1, 10, 16, dtype=torch.float64)) < 0.95


@pytest.mark.parametrize("n,d1,d2", [(20, 5, 7), (30, 50, 40), (12, 3, 100)])
def test_cka_matches_numpy_reference(n, d1, d2):
    X, Y = randn(n, d1, seed=n), randn(n, d2, seed=n + 1)
    Y = Y + 0.5 * X[:, :1]  # some shared signal
    assert linear_cka(X, Y) == pytest.approx(np_cka(X.numpy(), Y.numpy()), abs=1e-10)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(
        np_cka_debiased(X.numpy(), Y.numpy()), abs=1e-10
    )


def test_cka_independent_data_tolerances():
    """E[CKA] ~ sqrt(d1 d2 / ((n + d1)(n + d2))) for independent isotropic Gaussians.

    n = 2000, d = 20: expectation 20 / 2020 = 0.0099; its sampling sd is of the same order, so
    0.03 (~3 sd above the mean) is the bound. With d >> n the biased estimator is far from 0
    (n = 50, d = 500: ~0.91) while the debiased one stays within +-0.05 of 0.
    """
    X, Y = randn(2000, 20, seed=1), randn(2000, 20, seed=2)
    assert 0.0 <= linear_cka(X, Y) < 0.03
    Xw, Yw = randn(50, 500, seed=3), randn(50, 500, seed=4)
    biased = linear_cka(Xw, Yw)
    assert biased == pytest.approx(500 / 550, abs=0.05)
    assert abs(linear_cka(Xw, Yw, debiased=True)) < 0.05


def test_cka_matrix_tidy_and_consistent():
    n = 40
    base = randn(n, 12, seed=5)
    H_s = torch.stack([base, randn(n, 12, seed=6)], dim=1)  # [n, 2, 12]
    H_t = torch.stack([randn(n, 20, seed=7), base @ randn(12, 20, seed=8), 2 * base @ random_rotation(12)[:, :12].T @ torch.eye(12, 20, dtype=torch.float64)], dim=1)
    frame = cka_matrix(H_s, H_t, source_layers=[3, 5], target_layers=[0, 1, 2])
    assert list(frame.columns) == ["source_layer", "target_layer", "cka"]
    assert len(frame) == 6
    for _, row in frame.iterrows():
        i, j = [3, 5].index(row.source_layer), int(row.target_layer)
        assert row.cka == pytest.approx(linear_cka(H_s[:, i], H_t[:, j]), abs=1e-12)
    assert frame.query("source_layer == 3 and target_layer == 2").cka.item() == pytest.approx(1.0)
    deb = cka_matrix(H_s, H_t, debiased=True)
    assert deb.cka.iloc[0] == pytest.approx(linear_cka(H_s[:, 0], H_t[:, 0], debiased=True))


def test_cka_errors():
    with pytest.raises(UnlockLensError, match="rows"):
        linear_cka(randn(10, 3), randn(11, 3))
    with pytest.raises(UnlockLensError, match="n >= 4"):
        linear_cka(randn(3, 3), randn(3, 3), debiased=True)
    with pytest.raises(UnlockLensError, match="same n"):
        cka_matrix(randn(10, 2, 3), randn(9, 2, 3))


# ---- CCA, alignment, key cosines ---------------------------------------------------------


def test_cca_spectrum_known_answers():
    n, k = 500, 3
    Z = randn(n, k, seed=1)
    Xs = Z @ randn(k, 10, seed=2)
    Xt = Z @ randn(k, 15, seed=3) + 4.0  # same latent, other mixing: correlations 1
    rho = cca_spectrum(Xs, Xt, k)
    assert rho.shape == (k,)
    assert float(rho.min()) > 0.999
    assert bool((rho[:-1] >= rho[1:] - 1e-9).all())  # descending
    # independent data, k << n: sqrt(k/n)-scale correlations, all small
    rho0 = cca_spectrum(randn(n, 10, seed=4), randn(n, 10, seed=5), k)
    assert float(rho0.max()) < 0.25
    with pytest.raises(UnlockLensError, match="k=11"):
        cca_spectrum(randn(n, 10), randn(n, 12), 11)


def test_cca_table_layout():
    H_s, H_t = randn(60, 2, 6, seed=1), randn(60, 3, 8, seed=2)
    frame = cca_table(H_s, H_t, [(0, 0), (1, 2)], 4)
    assert list(frame.columns) == ["source_layer", "target_layer", "index", "correlation"]
    assert len(frame) == 8
    first = frame[(frame.source_layer == 1) & (frame.target_layer == 2)].correlation.to_numpy()
    np.testing.assert_allclose(first, cca_spectrum(H_s[:, 1], H_t[:, 2], 4).numpy())


def test_alignment_table_reads_heldout_r2():
    Xs = randn(80, 10, seed=1).float()
    Xt = Xs @ randn(10, 12, seed=2).float()
    maps = {
        0: fit_alignment(Xs, Xt, rank=10, holdout=0.25, source_layer=0, target_layer=0),
        1: fit_alignment(Xs, randn(80, 12, seed=3).float(), rank=4, source_layer=0, target_layer=1),
    }
    frame = alignment_table(maps)
    assert list(frame.target_layer) == [0, 1]
    assert frame.heldout_r2.iloc[0] > 0.99  # exact linear relation generalises
    assert math.isnan(frame.heldout_r2.iloc[1])  # fitted without holdout
    assert frame.train_r2.iloc[1] < 0.5
    assert list(frame["rank"]) == [10, 4]


def test_alignment_sweep_rank_grid():
    n = 60
    Z = randn(n, 3, seed=1)
    H_s = torch.stack([Z @ randn(3, 10, seed=2), randn(n, 10, seed=3)], 1).float()
    H_t = torch.stack([Z @ randn(3, 14, seed=4)], 1).float()  # layer 0 pairs share a 3-d latent
    frame = alignment_sweep(H_s, H_t, [(0, 0), (1, 0)], methods=("svd", "ridge"),
                            ranks=(1, 3, 99), holdout=0.25)
    svd = frame[frame.method == "svd"]
    assert sorted(svd["rank"].unique()) == [1, 3]  # 99 > min(n_train=45, 10, 14) dropped
    assert len(frame[frame.method == "ridge"]) == 2
    shared = svd[(svd.source_layer == 0) & (svd["rank"] == 3)].heldout_r2.item()
    unrelated = svd[(svd.source_layer == 1) & (svd["rank"] == 3)].heldout_r2.item()
    assert shared > 0.99 and unrelated < 0.2
    assert svd[(svd.source_layer == 0) & (svd["rank"] == 1)].heldout_r2.item() < shared


def test_key_cosines():
    a = randn(4, 8, seed=1)
    native = {0: a[0], 1: -a[1], 2: randn(8, seed=2), 7: a[3]}
    frame = key_cosines(a, native)
    assert list(frame.layer) == [0, 1, 2]
    assert frame.cosine.iloc[0] == pytest.approx(1.0)
    assert frame.cosine.iloc[1] == pytest.approx(-1.0)
    expected = float(torch.nn.functional.cosine_similarity(a[2], native[2], dim=0))
    assert frame.cosine.iloc[2] == pytest.approx(expected)
    with pytest.raises(UnlockLensError, match="no layer in common"):
        key_cosines({0: a[0]}, {1: a[1]})
