"""scikit-learn conventions for the alignment estimators: checks, clone, GridSearchCV, torch I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from unlock_lens.align import (
    CCAAlignment,
    LinearAlignment,
    ProcrustesAlignment,
    RidgeAlignment,
    SVDAlignment,
    fit_alignment,
)

# Single-output targets cap a rank-k method at k <= d_tgt = 1, so the checks run at rank 1.
CHECKED = [
    SVDAlignment(rank=1),
    ProcrustesAlignment(rank=1),
    CCAAlignment(rank=1),
    RidgeAlignment(),
    LinearAlignment(method="ridge", method_params={"alpha": 0.5}),
]
EXPECTED_FAILURES = {
    "check_fit2d_predict1d": (
        "transform() accepts one 1-D direction (a MasterKey row) by design and returns a 1-D "
        "mapped direction; predict() still refuses 1-D input"
    ),
}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_checks(estimator, check):
    check(estimator)


def _planted(rank: int, n: int = 80, d_s: int = 24, d_t: int = 16, noise: float = 0.05, seed: int = 0):
    """Source and target driven by the same rank-``rank`` latent, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, rank)) * np.linspace(3.0, 1.5, rank)
    A = np.linalg.qr(rng.normal(size=(d_s, rank)))[0].T
    B = np.linalg.qr(rng.normal(size=(d_t, rank)))[0].T
    X = Z @ A + noise * rng.normal(size=(n, d_s))
    Y = Z @ B + noise * rng.normal(size=(n, d_t))
    return X, Y


@pytest.mark.parametrize("planted", [2, 4])
def test_grid_search_recovers_the_planted_rank(planted):
    X, Y = _planted(planted)
    search = GridSearchCV(SVDAlignment(), {"rank": [1, 2, 3, 4, 6, 8, 12]},
                          cv=KFold(5, shuffle=True, random_state=0)).fit(X, Y)
    assert search.best_params_ == {"rank": planted}
    assert search.best_estimator_.rank_ == planted
    assert search.best_score_ > 0.95


def test_clone_keeps_params_and_drops_fit():
    est = CCAAlignment(rank=3, eps=1e-4).fit(*_planted(3))
    copy = clone(est)
    assert copy.get_params() == {"rank": 3, "eps": 1e-4, "scale_by_correlation": False}
    assert not hasattr(copy, "layer_map_")
    assert LinearAlignment(method="ridge", method_params={"alpha": 2.0}).get_params()["method_params"] == {"alpha": 2.0}


@pytest.mark.parametrize(
    "est, kwargs",
    [
        (SVDAlignment(rank=3), dict(method="svd", rank=3)),
        (SVDAlignment(rank=3, centered=True), dict(method="svd", rank=3, centered=True)),
        (ProcrustesAlignment(rank=3), dict(method="procrustes", rank=3)),
        (CCAAlignment(rank=3), dict(method="cca", rank=3)),
        (RidgeAlignment(alpha=0.3), dict(method="ridge", alpha=0.3)),
        (LinearAlignment(method="cca", rank=2, method_params={"eps": 1e-3}),
         dict(method="cca", rank=2, eps=1e-3)),
    ],
)
def test_estimator_equals_fit_alignment(est, kwargs):
    X, Y = _planted(3, seed=1)
    est.fit(X, Y)
    ref = fit_alignment(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32), **kwargs)
    np.testing.assert_allclose(est.weight_, ref.weight.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.predict(X), ref.predict(torch.tensor(X, dtype=torch.float32)).numpy(),
                               rtol=1e-4, atol=1e-5)
    # sklearn's linear layout: predict(X) = X @ coef_.T + intercept_
    np.testing.assert_allclose(est.predict(X), X @ est.coef_.T + est.intercept_, rtol=1e-4, atol=1e-4)
    assert est.score(X, Y) == pytest.approx(ref.r2(torch.tensor(X), torch.tensor(Y)), abs=1e-5)


def test_transform_maps_directions_without_means_and_accepts_torch():
    X, Y = _planted(3, seed=2)
    X, Y = X + 5.0, Y - 2.0  # non-zero means: predict uses them, transform must not
    est = SVDAlignment(rank=3, centered=True).fit(torch.tensor(X, dtype=torch.bfloat16), torch.tensor(Y))
    v = np.random.default_rng(3).normal(size=X.shape[1]).astype(np.float32)
    out = est.transform(torch.tensor(v))
    assert out.shape == (Y.shape[1],) and out.dtype == np.float32
    np.testing.assert_allclose(out, v @ est.weight_, rtol=1e-4, atol=1e-5)
    assert not np.allclose(est.predict(v[None])[0], out, atol=1e-2)
    assert est.predict(torch.tensor(X[:4])).dtype == np.float32
    assert est.predict(X[:4]).dtype == np.float64


def test_refusals_are_value_errors():
    X, Y = _planted(2)
    with pytest.raises(ValueError, match="rank=30 exceeds"):
        SVDAlignment(rank=30).fit(X, Y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SVDAlignment(rank=2).fit(X, Y[:-1])
    est = SVDAlignment(rank=2).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :5])
