"""scikit-learn estimators around :func:`fit_alignment`: fit / predict / transform / score.

    est = SVDAlignment(rank=16).fit(X_src, X_tgt)     # X_src [n, d_src], X_tgt [n, d_tgt]
    est.predict(X_src)                                # activations: (X - mu_s) W + mu_t
    est.transform(key_direction)                      # directions:  v W (no means)
    est.score(X_src, X_tgt)                           # pooled R^2 (variance-weighted)
    GridSearchCV(SVDAlignment(), {"rank": [1, 4, 16]}).fit(X_src, X_tgt)

Inputs may be numpy arrays or torch tensors (any float dtype, any device); the fit runs in
float32 and outputs are numpy in the input's dtype (float32 stays float32, anything else is
float64). Fitted attributes end in ``_``: ``layer_map_`` (the :class:`LayerMap`), ``weight_``
(dense ``W``, ``d_src x d_tgt``), ``coef_`` (``W.T``, sklearn's ``[n_targets, n_features]``
layout) and ``intercept_``, so ``predict(X) == X @ coef_.T + intercept_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import TransformerTags
from sklearn.utils.validation import check_is_fitted, validate_data

from unlock_lens.align.base import LayerMap, fit_alignment

ArrayLike = Any  # numpy array, torch tensor, or nested lists
_LOW_RANK = frozenset({"svd", "procrustes", "cca"})


def _to_numpy(X: ArrayLike) -> ArrayLike:
    """Torch tensors (any dtype/device) become numpy float32; everything else passes through."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        return X.float().numpy() if X.is_floating_point() else X.numpy()
    return X


class LinearAlignment(RegressorMixin, BaseEstimator):
    """Any registered alignment method as a multi-output regressor from source to target.

    ``method`` is a key of :data:`ALIGNMENT_METHODS` (``svd``, ``procrustes``, ``cca``,
    ``ridge``, ``identity``); ``method_params`` go to its fit function (e.g.
    ``{"alpha": 1.0}`` for ridge, ``{"eps": 1e-4}`` for cca).
    """

    def __init__(
        self,
        method: str = "svd",
        rank: int = 16,
        centered: bool = False,
        method_params: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.rank = rank
        self.centered = centered
        self.method_params = method_params

    def _spec(self) -> tuple[str, int, bool, dict[str, Any]]:
        """(method, rank, centered, extra fit kwargs) for :func:`fit_alignment`."""
        return self.method, self.rank, self.centered, dict(self.method_params or {})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.transformer_tags = TransformerTags()  # transform() maps directions
        # a rank-k map regresses on the top-k source principal directions only, not on all of X
        tags.regressor_tags.poor_score = self._spec()[0] in _LOW_RANK
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike) -> LinearAlignment:
        """Fit on paired activations: row i of ``X`` (source) and ``y`` (target) = same prompt."""
        X, y = validate_data(
            self, _to_numpy(X), _to_numpy(y), multi_output=True, y_numeric=True,
            dtype=[np.float32, np.float64], ensure_min_samples=2,
        )
        self._y_1d = y.ndim == 1
        Y = y.reshape(-1, 1) if self._y_1d else y
        method, rank, centered, kwargs = self._spec()
        self.layer_map_: LayerMap = fit_alignment(
            torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32),
            method=method, rank=rank, centered=centered, **kwargs,
        )
        lm = self.layer_map_
        W = lm.weight
        self.weight_: Float[np.ndarray, "d_src d_tgt"] = W.numpy()
        self.coef_: Float[np.ndarray, "d_tgt d_src"] = W.T.contiguous().numpy()
        self.intercept_: Float[np.ndarray, " d_tgt"] = (lm.target_mean - lm.source_mean @ W).numpy()
        self.n_targets_ = int(Y.shape[1])
        self.rank_ = int(lm.rank)
        return self

    def _check_input(self, X: ArrayLike) -> tuple[torch.Tensor, np.dtype]:
        """Validated float32 tensor and the dtype outputs come back in (float32 or float64)."""
        check_is_fitted(self, "layer_map_")
        X = validate_data(self, _to_numpy(X), reset=False, dtype=[np.float64, np.float32])
        return torch.tensor(X, dtype=torch.float32), X.dtype

    def predict(self, X: ArrayLike) -> Float[np.ndarray, "n d_tgt"]:
        """Map source activations into the target space: ``(X - mu_s) W + mu_t``."""
        X_t, dtype = self._check_input(X)
        out = self.layer_map_.predict(X_t).numpy().astype(dtype)
        return out[:, 0] if self._y_1d else out

    def transform(self, v: ArrayLike) -> Float[np.ndarray, "... d_tgt"]:
        """Map source *directions* (a key, differences): ``v W``, no means. 1-D in, 1-D out."""
        check_is_fitted(self, "layer_map_")
        v = np.asarray(_to_numpy(v))
        if v.ndim == 1:
            return self.transform(v[None])[0]
        v_t, dtype = self._check_input(v)
        return self.layer_map_.transform(v_t).numpy().astype(dtype)

    def fit_transform(self, X: ArrayLike, y: ArrayLike) -> Float[np.ndarray, "n d_tgt"]:
        """``fit(X, y).transform(X)``: the source rows mapped as directions (no means)."""
        return self.fit(X, y).transform(X)

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike = None) -> float:
        """Pooled R^2 (``r2_score(..., multioutput="variance_weighted")`` = ``LayerMap.r2``)."""
        y = np.asarray(_to_numpy(y))
        return float(r2_score(y, self.predict(X), sample_weight=_to_numpy(sample_weight),
                              multioutput="variance_weighted"))


class SVDAlignment(LinearAlignment):
    """The UNLOCK authors' map (``method="svd"``): least squares between top-``rank`` SVD bases."""

    def __init__(self, rank: int = 16, centered: bool = False) -> None:
        self.rank = rank
        self.centered = centered

    def _spec(self) -> tuple[str, int, bool, dict[str, Any]]:
        return "svd", self.rank, self.centered, {}


class ProcrustesAlignment(LinearAlignment):
    """Scaled orthogonal map between the top-``rank`` SVD bases (``method="procrustes"``)."""

    def __init__(self, rank: int = 16, centered: bool = False) -> None:
        self.rank = rank
        self.centered = centered

    def _spec(self) -> tuple[str, int, bool, dict[str, Any]]:
        return "procrustes", self.rank, self.centered, {}


class CCAAlignment(LinearAlignment):
    """Canonical-variate map on top-``rank`` centred PCA coordinates (``method="cca"``)."""

    def __init__(self, rank: int = 16, eps: float = 1e-6, scale_by_correlation: bool = False) -> None:
        self.rank = rank
        self.eps = eps
        self.scale_by_correlation = scale_by_correlation

    def _spec(self) -> tuple[str, int, bool, dict[str, Any]]:
        return "cca", self.rank, True, {"eps": self.eps,
                                         "scale_by_correlation": self.scale_by_correlation}


class RidgeAlignment(LinearAlignment):
    """Full-rank centred ridge regression (``method="ridge"``); ``alpha=None`` = 1% of mean energy."""

    def __init__(self, alpha: float | None = None) -> None:
        self.alpha = alpha

    def _spec(self) -> tuple[str, int, bool, dict[str, Any]]:
        return "ridge", 1, True, {"alpha": self.alpha}


__all__ = [
    "CCAAlignment",
    "LinearAlignment",
    "ProcrustesAlignment",
    "RidgeAlignment",
    "SVDAlignment",
]
