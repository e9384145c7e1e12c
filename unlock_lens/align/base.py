"""Fitted linear maps between two models' residual streams, and the fitting entry point.

A :class:`LayerMap` carries activations (or directions) of a source layer into a target
layer's space. It is stored factorised, ``W = source_basis @ core @ target_basis.T``, so a
rank-k map between 4096-wide models costs two ``d x k`` matrices rather than ``d x d``.

:func:`fit_alignment` validates the two activation matrices, optionally holds out a seeded
random fraction of rows for evaluation, and dispatches to a fitting function registered in
:data:`ALIGNMENT_METHODS` (``svd``, ``procrustes``, ``cca``, ``ridge``, ``identity``).
All arithmetic is float32; float16/bfloat16 inputs are upcast first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.artifacts import load_artifact, save_artifact
from unlock_lens.errors import ArtifactError, UnlockLensError

ARTIFACT_KIND = "LayerMap"
_EXTRA_PREFIX = "extras."
_CORE_TENSORS = ("source_basis", "core", "target_basis", "source_mean", "target_mean")


@dataclass(eq=False)
class LayerMap:
    """A linear map ``x -> (x - source_mean) @ W + target_mean`` with ``W`` kept factorised.

    ``W = source_basis @ core @ target_basis.T`` (``d_src x d_tgt``). Means are zeros when the
    map was fitted uncentred. ``extras`` holds method-specific tensors (e.g. CCA's
    ``canonical_correlations``); ``metrics`` holds scalar fit diagnostics.
    """

    source_basis: Float[Tensor, "d_src k"] = field(repr=False)
    core: Float[Tensor, "k k2"] = field(repr=False)
    target_basis: Float[Tensor, "d_tgt k2"] = field(repr=False)
    source_mean: Float[Tensor, " d_src"] = field(repr=False)
    target_mean: Float[Tensor, " d_tgt"] = field(repr=False)
    method: str = "svd"
    rank: int = 0
    source_layer: int | None = None
    target_layer: int | None = None
    centered: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def d_src(self) -> int:
        return int(self.source_basis.shape[0])

    @property
    def d_tgt(self) -> int:
        return int(self.target_basis.shape[0])

    @property
    def weight(self) -> Float[Tensor, "d_src d_tgt"]:
        """The dense map ``W = source_basis @ core @ target_basis.T``."""
        return self.source_basis @ self.core @ self.target_basis.T

    def to(self, device: torch.device | str) -> LayerMap:
        """A copy with every tensor moved to ``device``."""
        moved = {k: v.to(device) for k, v in self.to_tensors().items()}
        return LayerMap.from_tensors(moved, self._meta())

    def _check_width(self, x: Tensor, what: str) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 0 or x.shape[-1] != self.d_src:
            raise UnlockLensError(
                f"{what} has shape {tuple(x.shape)} but this map expects a last dimension of "
                f"d_src={self.d_src} (source layer {self.source_layer})"
            )
        return x.to(device=self.source_basis.device, dtype=self.source_basis.dtype)

    def transform(self, v: Float[Tensor, "... d_src"]) -> Float[Tensor, "... d_tgt"]:
        """Map direction(s) ``v @ W`` through the factors (no means: a direction is a difference).

        Computed on the map's device in float32; W itself is never formed.
        """
        v = self._check_width(v, "direction")
        return ((v @ self.source_basis) @ self.core) @ self.target_basis.T

    def predict(self, X: Float[Tensor, "... d_src"]) -> Float[Tensor, "... d_tgt"]:
        """Map activations: ``(X - source_mean) @ W + target_mean``."""
        X = self._check_width(X, "activations")
        return self.transform(X - self.source_mean) + self.target_mean

    def relative_error(
        self, X_src: Float[Tensor, "n d_src"], X_tgt: Float[Tensor, "n d_tgt"]
    ) -> float:
        """``||X_tgt - predict(X_src)||_F / ||X_tgt||_F`` (0 is a perfect fit)."""
        X_tgt = _as_float_like(X_tgt, self.target_basis)
        residual = X_tgt - self.predict(X_src)
        denom = torch.linalg.matrix_norm(X_tgt)
        return float(torch.linalg.matrix_norm(residual) / denom) if denom > 0 else math.nan

    def r2(self, X_src: Float[Tensor, "n d_src"], X_tgt: Float[Tensor, "n d_tgt"]) -> float:
        """Pooled R^2 = 1 - SS_res / SS_tot, sums over all entries, SS_tot about X_tgt's column means.

        Every entry weighs the same, so high-variance target dimensions dominate; this equals
        scikit-learn's ``r2_score(..., multioutput="variance_weighted")``. NaN if SS_tot = 0.
        """
        X_tgt = _as_float_like(X_tgt, self.target_basis)
        ss_res = (X_tgt - self.predict(X_src)).square().sum()
        ss_tot = (X_tgt - X_tgt.mean(dim=0, keepdim=True)).square().sum()
        return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else math.nan

    # ---- serialisation -------------------------------------------------------------------

    def to_tensors(self) -> dict[str, Tensor]:
        """All tensors by name (extras under ``extras.<name>``)."""
        out = {name: getattr(self, name) for name in _CORE_TENSORS}
        out.update({_EXTRA_PREFIX + k: v for k, v in self.extras.items()})
        return out

    def _meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rank": int(self.rank),
            "source_layer": self.source_layer,
            "target_layer": self.target_layer,
            "centered": bool(self.centered),
            "d_src": self.d_src,
            "d_tgt": self.d_tgt,
            "dtype": str(self.core.dtype),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
        }

    def to_tensors_and_meta(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(to_tensors(), meta)`` where meta is a JSON-serialisable dict."""
        return self.to_tensors(), self._meta()

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> LayerMap:
        """Rebuild from :meth:`to_tensors` output and the meta dict of :meth:`to_tensors_and_meta`."""
        missing = [n for n in _CORE_TENSORS if n not in tensors]
        missing += [k for k in ("method", "rank", "centered") if k not in meta]
        if missing:
            raise ArtifactError(f"LayerMap data lacks {missing}; re-create the map")
        extras = {
            k[len(_EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_EXTRA_PREFIX)
        }
        return cls(
            **{n: tensors[n] for n in _CORE_TENSORS},
            method=str(meta["method"]),
            rank=int(meta["rank"]),
            source_layer=meta.get("source_layer"),
            target_layer=meta.get("target_layer"),
            centered=bool(meta["centered"]),
            metrics={k: float(v) for k, v in (meta.get("metrics") or {}).items()},
            extras=extras,
        )

    def save(self, path: str | Path) -> Path:
        """Write one hash-checked ``.safetensors`` artefact (kind ``LayerMap``), atomically."""
        return save_artifact(path, ARTIFACT_KIND, self.to_tensors(), self._meta())

    @classmethod
    def load(cls, path: str | Path) -> LayerMap:
        """Read a map written by :meth:`save`; raises ArtifactError if damaged or of another kind."""
        tensors, meta = load_artifact(path, ARTIFACT_KIND)
        return cls.from_tensors(tensors, meta)


# ---- shared numerics ---------------------------------------------------------------------


def _as_float_like(x: Tensor, ref: Tensor) -> Tensor:
    return torch.as_tensor(x).to(device=ref.device, dtype=ref.dtype)


def as_float32(X: Tensor) -> Tensor:
    """``X`` as a float32 tensor (float16/bfloat16/int are upcast; float64 is downcast)."""
    X = torch.as_tensor(X)
    return X if X.dtype == torch.float32 else X.to(torch.float32)


def center(
    X: Float[Tensor, "n d"], centered: bool
) -> tuple[Float[Tensor, "n d"], Float[Tensor, " d"]]:
    """``(X - mean, mean)`` if centred, else ``(X, zeros)``."""
    if centered:
        mean = X.mean(dim=0)
        return X - mean, mean
    return X, torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)


def top_right_singular_vectors(
    X: Float[Tensor, "n d"], k: int
) -> tuple[Float[Tensor, "d k"], Float[Tensor, " r"]]:
    """Top-``k`` right singular vectors of ``X`` (as columns) and all singular values.

    With few rows (n <= d/2, the usual case: hundreds of prompts, thousands of dimensions) the
    n x n Gram matrix is eigendecomposed in float64 instead of a thin SVD of X: the same
    subspace, about 18x faster at n=512, d=4096 (benchmarks/bench_alignment.py). Falls back to
    the SVD when the top-k spectrum is (nearly) rank-deficient.
    """
    n, d = X.shape
    if n <= d // 2:
        X64 = X.double()
        evals, U = torch.linalg.eigh(X64 @ X64.T)
        evals, U = evals.flip(0), U.flip(1)
        S = evals.clamp_min(0).sqrt()
        if S[0] > 0 and S[k - 1] > 1e-6 * S[0]:
            V = (X64.T @ U[:, :k]) / S[:k]
            return V.to(X.dtype).contiguous(), S.to(X.dtype)
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return Vh[:k].T.contiguous(), S


def energy_captured(S: Float[Tensor, " r"], k: int) -> float:
    """Fraction of ``||X||_F^2`` in the top-``k`` singular directions."""
    total = S.square().sum()
    return float(S[:k].square().sum() / total) if total > 0 else math.nan


# ---- registry and entry point ------------------------------------------------------------

FitFn = Callable[..., LayerMap]
ALIGNMENT_METHODS: dict[str, FitFn] = {}
"""Method name -> ``fit(X_src, X_tgt, rank, centered, **kwargs) -> LayerMap``."""
_RANK_FREE: set[str] = set()


def register_method(name: str, *, uses_rank: bool = True) -> Callable[[FitFn], FitFn]:
    """Decorator adding a fit function to :data:`ALIGNMENT_METHODS` under ``name``.

    ``uses_rank=False`` marks methods that ignore ``rank`` (no upper bound is checked).
    """

    def deco(fn: FitFn) -> FitFn:
        ALIGNMENT_METHODS[name] = fn
        if not uses_rank:
            _RANK_FREE.add(name)
        return fn

    return deco


def _validate_matrix(X: Any, name: str) -> Tensor:
    if not isinstance(X, Tensor):
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError) as err:
            raise UnlockLensError(f"{name} is not convertible to a tensor: {err}") from err
    if X.ndim != 2:
        raise UnlockLensError(
            f"{name} must be 2-D (n prompts x d_model), got shape {tuple(X.shape)}; "
            "stack the per-prompt final-token activations into a matrix"
        )
    if X.dtype == torch.bool or X.is_complex():
        raise UnlockLensError(f"{name} has dtype {X.dtype}; pass real-valued activations")
    X = as_float32(X)
    bad = int((~torch.isfinite(X)).sum())
    if bad:
        raise UnlockLensError(
            f"{name} has {bad} non-finite entries (NaN or inf) out of {X.numel()}; "
            "drop or recompute the affected prompts"
        )
    return X


def fit_alignment(
    X_src: Float[Tensor, "n d_src"],
    X_tgt: Float[Tensor, "n d_tgt"],
    *,
    method: str = "svd",
    rank: int = 16,
    centered: bool = False,
    holdout: float = 0.0,
    seed: int = 0,
    source_layer: int | None = None,
    target_layer: int | None = None,
    target_rank: int | None = None,
    **kwargs: Any,
) -> LayerMap:
    """Fit a source->target map on paired activations (row i of both = the same prompt).

    ``holdout`` in [0, 1): fit on a seeded random ``1 - holdout`` share of the rows and record
    ``heldout_relative_error`` / ``heldout_r2`` in ``metrics`` (``train_*`` are always
    recorded). ``rank`` must satisfy 1 <= rank <= min(n_train, d_src, d_tgt) for the rank-k
    methods (``ridge`` and ``identity`` ignore it). ``target_rank`` (``svd`` only): the target
    basis's own rank, as in the authors' per-side clamp; ``rank`` is then bounded by
    min(n_train, d_src) alone and ``target_rank`` by min(n_train, d_tgt). Extra ``kwargs`` go
    to the method.
    """
    if method not in ALIGNMENT_METHODS:
        known = ", ".join(sorted(ALIGNMENT_METHODS))
        raise UnlockLensError(f"unknown alignment method {method!r}; known methods: {known}")
    X_src = _validate_matrix(X_src, "X_src")
    X_tgt = _validate_matrix(X_tgt, "X_tgt").to(X_src.device)
    n, d_src = X_src.shape
    d_tgt = X_tgt.shape[1]
    if X_tgt.shape[0] != n:
        raise UnlockLensError(
            f"X_src has {n} rows but X_tgt has {X_tgt.shape[0]}: the two matrices must hold "
            "the same prompts in the same order (mismatched n)"
        )
    if n < 2:
        raise UnlockLensError(f"need at least 2 paired rows (prompts) to fit a map, got n={n}")
    if d_src < 1 or d_tgt < 1:
        raise UnlockLensError(f"activation widths must be >= 1, got d_src={d_src}, d_tgt={d_tgt}")
    if method == "identity" and d_src != d_tgt:
        raise UnlockLensError(
            f"method 'identity' needs equal widths but d_src={d_src} != d_tgt={d_tgt}; "
            "use 'svd', 'procrustes', 'cca' or 'ridge' between models of different width"
        )
    if not 0.0 <= float(holdout) < 1.0:
        raise UnlockLensError(f"holdout must be in [0, 1), got {holdout}")

    train_idx = test_idx = None
    if holdout > 0:
        n_test = max(1, round(holdout * n))
        if n - n_test < 2:
            raise UnlockLensError(
                f"holdout={holdout} of n={n} rows leaves {n - n_test} training rows; need >= 2"
            )
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen).to(X_src.device)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    Xs_fit = X_src if train_idx is None else X_src[train_idx]
    Xt_fit = X_tgt if train_idx is None else X_tgt[train_idx]
    n_train = Xs_fit.shape[0]

    for name, value in (("rank", rank), ("target_rank", target_rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UnlockLensError(f"{name} must be an int, got {value!r}")
        if value is not None and value < 1:
            raise UnlockLensError(f"{name} must be >= 1, got {name}={value}")
    if target_rank is None:
        limit = min(n_train, d_src, d_tgt)
        if method not in _RANK_FREE and rank > limit:
            raise UnlockLensError(
                f"rank={rank} exceeds the limit min(n_train={n_train}, d_src={d_src}, "
                f"d_tgt={d_tgt}) = {limit}; lower rank or add prompts"
            )
    else:
        if method != "svd":
            raise UnlockLensError(f"target_rank (a separate target-side rank) is for method 'svd', "
                                  f"not {method!r}: pass rank alone")
        for name, value, d_name, d in (("rank", rank, "d_src", d_src), ("target_rank", target_rank, "d_tgt", d_tgt)):
            if value > min(n_train, d):
                raise UnlockLensError(f"{name}={value} exceeds min(n_train={n_train}, {d_name}={d}) = "
                                      f"{min(n_train, d)}; lower it or add prompts")
        kwargs["target_rank"] = target_rank

    fitted = ALIGNMENT_METHODS[method](Xs_fit, Xt_fit, rank, centered, **kwargs)
    fitted.source_layer = source_layer
    fitted.target_layer = target_layer
    metrics = dict(fitted.metrics)
    metrics["n_train"] = float(n_train)
    metrics["train_relative_error"] = fitted.relative_error(Xs_fit, Xt_fit)
    metrics["train_r2"] = fitted.r2(Xs_fit, Xt_fit)
    if test_idx is not None:
        metrics["holdout"] = float(holdout)
        metrics["seed"] = float(seed)
        metrics["n_heldout"] = float(test_idx.numel())
        metrics["heldout_relative_error"] = fitted.relative_error(X_src[test_idx], X_tgt[test_idx])
        metrics["heldout_r2"] = fitted.r2(X_src[test_idx], X_tgt[test_idx])
    fitted.metrics = metrics
    return fitted
