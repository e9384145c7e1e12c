"""Fit every alignment method from d x d sufficient statistics, so memory depends on d, not n.

    stats = GramStats.empty(d_src, d_tgt)
    for X_src, X_tgt in chunks:                       # rows of a streamed capture
        stats.update(X_src, X_tgt)                    # float64 sums, X^T X, X^T Y, Y^T Y
    layer_map = fit_from_stats(stats, "svd", rank=16)  # == fit_alignment(X_src, X_tgt, ...)

Each method's fit reproduces the dense one in ``svd.py`` / ``procrustes.py`` / ``cca.py`` /
``ridge.py`` / ``identity.py`` (same defaults, centring rules, cores, means and metrics) with
the rows only entering through ``G = H^T H`` (``H`` the centred or raw rows): the top-k right
singular vectors of ``H`` are the top-k eigenvectors of ``G``, and ``(H_s V_s)^T (H_t V_t) =
V_s^T G_st V_t``. Eigendecompositions run in float64; maps come back float32 like the dense fits.

Centred Gram matrices are ``X^T X - n mu mu^T``: that loses about ``2 log10(|mean| / spread)``
of float64's 16 digits (6 for a mean 1000x the spread), far below the float32 dense fits' error. A seeded holdout needs the rows, so it is not available here: accumulate held-out
rows into a second :class:`GramStats` and score a map on it with :func:`stats_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.align.base import _RANK_FREE, ALIGNMENT_METHODS, LayerMap
from unlock_lens.align.cca import _sym_powers
from unlock_lens.errors import UnlockLensError

_F64 = torch.float64
#: the dense fits run in float32: their pinv cutoff and zero-alpha fallback use its epsilon
_DENSE_EPS = torch.finfo(torch.float32).eps


def _chunk(X: Any, name: str, width: int, device: torch.device) -> Tensor:
    """``X`` as a float64 ``[rows, width]`` tensor on ``device``; refuses bad shapes and NaN/inf."""
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[1] != width:
        raise UnlockLensError(
            f"{name} has shape {tuple(X.shape)} but these statistics take [rows, {width}] "
            "(one row per prompt, the layer's d_model columns)"
        )
    if X.dtype == torch.bool or X.is_complex():
        raise UnlockLensError(f"{name} has dtype {X.dtype}; pass real-valued activations")
    X = X.to(device=device, dtype=_F64)
    bad = int((~torch.isfinite(X)).sum())
    if bad:
        raise UnlockLensError(
            f"{name} has {bad} non-finite entries (NaN or inf) out of {X.numel()}; "
            "drop or recompute the affected prompts before accumulating them"
        )
    return X


def _same_rows(X_src: Tensor, X_tgt: Tensor) -> None:
    if X_src.shape[0] != X_tgt.shape[0]:
        raise UnlockLensError(
            f"X_src has {X_src.shape[0]} rows but X_tgt has {X_tgt.shape[0]}: both must hold "
            "the same prompts in the same order (mismatched n)"
        )


@dataclass(eq=False)
class GramStats:
    """Running float64 sums over paired rows: ``n``, column sums, ``X^T X``, ``X^T Y``, ``Y^T Y``.

    ``X`` holds source-layer rows, ``Y`` the target-layer rows of the same prompts. Memory is
    ``(d_src^2 + d_src d_tgt + d_tgt^2) * 8`` bytes whatever ``n`` is: 9 MiB for 576 -> 640,
    384 MiB a layer pair for 4096 -> 4096.
    """

    n: int
    sum_src: Float[Tensor, " d_src"]
    sum_tgt: Float[Tensor, " d_tgt"]
    src_src: Float[Tensor, "d_src d_src"]
    src_tgt: Float[Tensor, "d_src d_tgt"]
    tgt_tgt: Float[Tensor, "d_tgt d_tgt"]

    def __post_init__(self) -> None:
        d_s, d_t = self.sum_src.shape[0], self.sum_tgt.shape[0]
        shapes = {
            "src_src": (self.src_src, (d_s, d_s)),
            "src_tgt": (self.src_tgt, (d_s, d_t)),
            "tgt_tgt": (self.tgt_tgt, (d_t, d_t)),
        }
        for name, (t, want) in shapes.items():
            if tuple(t.shape) != want:
                raise UnlockLensError(f"GramStats.{name} has shape {tuple(t.shape)}, expected {want}")
        if self.n < 0:
            raise UnlockLensError(f"GramStats.n must be >= 0, got {self.n}")

    @classmethod
    def empty(cls, d_src: int, d_tgt: int, device: torch.device | str = "cpu") -> GramStats:
        """Zero statistics for ``d_src``- and ``d_tgt``-wide rows (kept on ``device``)."""
        if d_src < 1 or d_tgt < 1:
            raise UnlockLensError(f"widths must be >= 1, got d_src={d_src}, d_tgt={d_tgt}")

        def z(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=_F64, device=device)

        return cls(0, z(d_src), z(d_tgt), z(d_src, d_src), z(d_src, d_tgt), z(d_tgt, d_tgt))

    @classmethod
    def from_dense(
        cls, X_src: Float[Tensor, "n d_src"], X_tgt: Float[Tensor, "n d_tgt"], chunk: int = 4096
    ) -> GramStats:
        """Statistics of two in-memory matrices, accumulated ``chunk`` rows at a time."""
        X_src, X_tgt = torch.as_tensor(X_src), torch.as_tensor(X_tgt)
        if X_src.ndim != 2 or X_tgt.ndim != 2:
            raise UnlockLensError(
                f"X_src and X_tgt must be 2-D (n x d), got {tuple(X_src.shape)} and {tuple(X_tgt.shape)}"
            )
        _same_rows(X_src, X_tgt)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise UnlockLensError(f"chunk must be an int >= 1, got {chunk!r}")
        stats = cls.empty(X_src.shape[1], X_tgt.shape[1])
        for i in range(0, X_src.shape[0], chunk):
            stats.update(X_src[i : i + chunk], X_tgt[i : i + chunk])
        return stats

    @property
    def d_src(self) -> int:
        return int(self.sum_src.shape[0])

    @property
    def d_tgt(self) -> int:
        return int(self.sum_tgt.shape[0])

    @property
    def device(self) -> torch.device:
        return self.src_src.device

    def update(self, X_src: Float[Tensor, "m d_src"], X_tgt: Float[Tensor, "m d_tgt"]) -> GramStats:
        """Add ``m`` paired rows (any float dtype; moved to the statistics' device and summed in
        float64). Returns ``self``; on bad rows it raises and leaves the sums unchanged."""
        Xs = _chunk(X_src, "X_src", self.d_src, self.device)
        Xt = _chunk(X_tgt, "X_tgt", self.d_tgt, self.device)
        _same_rows(Xs, Xt)
        self.n += int(Xs.shape[0])
        self.sum_src += Xs.sum(dim=0)
        self.sum_tgt += Xt.sum(dim=0)
        self.src_src.addmm_(Xs.T, Xs)
        self.src_tgt.addmm_(Xs.T, Xt)
        self.tgt_tgt.addmm_(Xt.T, Xt)
        return self

    def merge(self, other: GramStats) -> GramStats:
        """Statistics of both row sets (a new object; neither input changes)."""
        if (other.d_src, other.d_tgt) != (self.d_src, self.d_tgt):
            raise UnlockLensError(
                f"cannot merge statistics of widths ({self.d_src}, {self.d_tgt}) and "
                f"({other.d_src}, {other.d_tgt}): they come from different layers or models"
            )
        o = other.to(self.device)
        return GramStats(
            self.n + o.n, self.sum_src + o.sum_src, self.sum_tgt + o.sum_tgt,
            self.src_src + o.src_src, self.src_tgt + o.src_tgt, self.tgt_tgt + o.tgt_tgt,
        )

    def to(self, device: torch.device | str) -> GramStats:
        """A copy on ``device`` (``self`` if already there)."""
        if torch.device(device) == self.device:
            return self
        t = [x.to(device) for x in (self.sum_src, self.sum_tgt, self.src_src, self.src_tgt, self.tgt_tgt)]
        return GramStats(self.n, *t)

    def means(self, centered: bool) -> tuple[Float[Tensor, " d_src"], Float[Tensor, " d_tgt"]]:
        """Column means of X and Y if ``centered``, else zeros (as :func:`~.base.center`)."""
        if centered:
            return self.sum_src / self.n, self.sum_tgt / self.n
        return torch.zeros_like(self.sum_src), torch.zeros_like(self.sum_tgt)

    def gram_src(self, centered: bool) -> Float[Tensor, "d_src d_src"]:
        """``H_s^T H_s`` with ``H_s = X`` or ``X - mean`` (= ``X^T X - n mu mu^T``)."""
        return _about_mean(self.src_src, self.sum_src, self.sum_src, self.n, centered)

    def gram_cross(self, centered: bool) -> Float[Tensor, "d_src d_tgt"]:
        """``H_s^T H_t`` (raw or centred)."""
        return _about_mean(self.src_tgt, self.sum_src, self.sum_tgt, self.n, centered)

    def gram_tgt(self, centered: bool) -> Float[Tensor, "d_tgt d_tgt"]:
        """``H_t^T H_t`` (raw or centred)."""
        return _about_mean(self.tgt_tgt, self.sum_tgt, self.sum_tgt, self.n, centered)


def _about_mean(raw: Tensor, sum_a: Tensor, sum_b: Tensor, n: int, centered: bool) -> Tensor:
    if not centered or n == 0:
        return raw
    return raw - torch.outer(sum_a, sum_b) / n


# ---- per-method fits -------------------------------------------------------------------------


class _Bases(NamedTuple):
    """Top-``k`` eigenvectors of both Grams, their full spectra, the cross Gram and the means."""

    Vs: Tensor
    Vt: Tensor
    lam_s: Tensor
    lam_t: Tensor
    G_st: Tensor
    mu_s: Tensor
    mu_t: Tensor


def _top_eigvecs(G: Float[Tensor, "d d"], k: int) -> tuple[Float[Tensor, "d k"], Float[Tensor, " d"]]:
    """Top-``k`` eigenvectors (columns) and all eigenvalues, descending and clamped at 0.

    These are ``H``'s top-``k`` right singular vectors and its squared singular values.
    """
    evals, evecs = torch.linalg.eigh(G)
    return evecs.flip(1)[:, :k].contiguous(), evals.flip(0).clamp_min(0)


def _bases(stats: GramStats, rank: int, centered: bool) -> _Bases:
    Vs, lam_s = _top_eigvecs(stats.gram_src(centered), rank)
    Vt, lam_t = _top_eigvecs(stats.gram_tgt(centered), rank)
    mu_s, mu_t = stats.means(centered)
    return _Bases(Vs, Vt, lam_s, lam_t, stats.gram_cross(centered), mu_s, mu_t)


def _energy(lam: Float[Tensor, " d"], k: int) -> float:
    """As :func:`~.base.energy_captured`: ``lam`` are the squared singular values."""
    total = lam.sum()
    return float(lam[:k].sum() / total) if total > 0 else math.nan


def _energies(b: _Bases, rank: int) -> dict[str, float]:
    return {"source_energy": _energy(b.lam_s, rank), "target_energy": _energy(b.lam_t, rank)}


def _layer_map(
    Vs: Tensor, core: Tensor, Vt: Tensor, mu_s: Tensor, mu_t: Tensor, **meta: Any
) -> LayerMap:
    def f32(t: Tensor) -> Tensor:
        return t.to(torch.float32).contiguous()

    extras = {k: f32(v) for k, v in meta.pop("extras", {}).items()}
    return LayerMap(source_basis=f32(Vs), core=f32(core), target_basis=f32(Vt),
                    source_mean=f32(mu_s), target_mean=f32(mu_t), extras=extras, **meta)


StatsFitFn = Callable[..., LayerMap]
STATS_METHODS: dict[str, StatsFitFn] = {}
"""Method name -> ``fit(stats, rank, centered, **kwargs) -> LayerMap`` (mirrors ALIGNMENT_METHODS)."""


def _register(name: str) -> Callable[[StatsFitFn], StatsFitFn]:
    def deco(fn: StatsFitFn) -> StatsFitFn:
        STATS_METHODS[name] = fn
        return fn

    return deco


@_register("svd")
def _svd(stats: GramStats, rank: int, centered: bool = False) -> LayerMap:
    """``core = pinv(H_s V_s) (H_t V_t) = diag(1 / lam_s) V_s^T G_st V_t``.

    ``(H_s V_s)^T (H_s V_s) = V_s^T G_ss V_s = diag(lam_s)``, so the pseudo-inverse is diagonal.
    """
    b = _bases(stats, rank, centered)
    lam = b.lam_s[:rank]
    # torch.linalg.pinv's default cutoff on the dense fit's float32 singular values sqrt(lam)
    keep = lam.sqrt() > max(stats.n, rank) * _DENSE_EPS * lam[0].sqrt()
    inv = torch.where(keep & (lam > 0), 1.0 / lam.clamp_min(torch.finfo(_F64).tiny), 0.0)
    core = inv[:, None] * (b.Vs.T @ b.G_st @ b.Vt)
    return _layer_map(b.Vs, core, b.Vt, b.mu_s, b.mu_t, method="svd", rank=rank,
                      centered=centered, metrics=_energies(b, rank))


@_register("procrustes")
def _procrustes(stats: GramStats, rank: int, centered: bool = False) -> LayerMap:
    """``svd(A^T B)`` with ``A^T B = V_s^T G_st V_t``; ``||A||_F^2 = sum of the top-k lam_s``."""
    b = _bases(stats, rank, centered)
    U, S, Vh = torch.linalg.svd(b.Vs.T @ b.G_st @ b.Vt)
    norm2 = b.lam_s[:rank].sum()
    scale = float(S.sum() / norm2) if norm2 > 0 else 0.0
    return _layer_map(b.Vs, scale * (U @ Vh), b.Vt, b.mu_s, b.mu_t, method="procrustes",
                      rank=rank, centered=centered, metrics={"scale": scale, **_energies(b, rank)})


@_register("cca")
def _cca(
    stats: GramStats, rank: int, centered: bool = True, eps: float = 1e-6,
    scale_by_correlation: bool = False,
) -> LayerMap:
    """As :func:`~.cca.fit_cca`: covariances of the centred PCA coordinates over ``n - 1``."""
    del centered
    b = _bases(stats, rank, True)
    dof = max(stats.n - 1, 1)
    eye = torch.eye(rank, dtype=_F64, device=stats.device)
    Caa = torch.diag(b.lam_s[:rank]) / dof
    Cbb = torch.diag(b.lam_t[:rank]) / dof
    Caa = Caa + eps * (Caa.trace() / rank) * eye
    Cbb = Cbb + eps * (Cbb.trace() / rank) * eye
    Cab = b.Vs.T @ b.G_st @ b.Vt / dof
    Caa_inv_half, _ = _sym_powers(Caa)
    Cbb_inv_half, Cbb_half = _sym_powers(Cbb)
    U, rho, Vh = torch.linalg.svd(Caa_inv_half @ Cab @ Cbb_inv_half)
    middle = U * rho if scale_by_correlation else U
    core = Caa_inv_half @ middle @ Vh @ Cbb_half
    metrics = {
        "eps": float(eps),
        "scale_by_correlation": float(scale_by_correlation),
        "mean_canonical_correlation": float(rho.mean()),
        **_energies(b, rank),
    }
    return _layer_map(b.Vs, core, b.Vt, b.mu_s, b.mu_t, method="cca", rank=rank, centered=True,
                      metrics=metrics, extras={"canonical_correlations": rho})


@_register("ridge")
def _ridge(
    stats: GramStats, rank: int | None = None, centered: bool = True, alpha: float | None = None
) -> LayerMap:
    """As :func:`~.ridge.fit_ridge` (primal form for any n: it equals the dual one)."""
    del rank, centered
    G_ss = stats.gram_src(True)
    d_src, d_tgt = stats.d_src, stats.d_tgt
    if alpha is None:
        alpha = 1e-2 * float(G_ss.trace()) / d_src
    alpha = float(alpha)
    if alpha <= 0:
        alpha = _DENSE_EPS  # all-zero source: any tiny ridge gives W = 0
    eye = torch.eye(d_src, dtype=_F64, device=stats.device)
    W = torch.linalg.solve(G_ss + alpha * eye, stats.gram_cross(True))
    mu_s, mu_t = stats.means(True)
    return _layer_map(eye, W, torch.eye(d_tgt, dtype=_F64, device=stats.device), mu_s, mu_t,
                      method="ridge", rank=min(d_src, d_tgt), centered=True,
                      metrics={"alpha": alpha})


@_register("identity")
def _identity(stats: GramStats, rank: int | None = None, centered: bool = False) -> LayerMap:
    """``W = I``; the means when ``centered``."""
    del rank
    eye = torch.eye(stats.d_src, dtype=_F64, device=stats.device)
    mu_s, mu_t = stats.means(centered)
    return _layer_map(eye, eye, eye, mu_s, mu_t, method="identity", rank=stats.d_src,
                      centered=centered)


# ---- metrics and entry point -----------------------------------------------------------------


def stats_metrics(layer_map: LayerMap, stats: GramStats) -> dict[str, float]:
    """``relative_error`` and ``r2`` of ``layer_map`` on the rows behind ``stats``.

    Equal to :meth:`LayerMap.relative_error` / :meth:`LayerMap.r2` on those rows, from
    ``SS_res = sum ||y - x W - c||^2`` with ``c = mu_t - mu_s W``, expanded over the sums.
    """
    if (layer_map.d_src, layer_map.d_tgt) != (stats.d_src, stats.d_tgt):
        raise UnlockLensError(
            f"map is {layer_map.d_src} -> {layer_map.d_tgt} but the statistics are "
            f"{stats.d_src} -> {stats.d_tgt}"
        )
    dev = stats.device
    Bs, C, Bt = (t.to(device=dev, dtype=_F64) for t in (layer_map.source_basis, layer_map.core,
                                                        layer_map.target_basis))

    def W_of(v: Tensor) -> Tensor:  # v W without forming W
        return ((v @ Bs) @ C) @ Bt.T

    c = layer_map.target_mean.to(dev, _F64) - W_of(layer_map.source_mean.to(dev, _F64))
    yy = stats.tgt_tgt.trace()
    cross = ((Bs.T @ stats.src_tgt @ Bt) * C).sum()  # tr(W^T X^T Y)
    quad = ((C.T @ (Bs.T @ stats.src_src @ Bs) @ C) * (Bt.T @ Bt)).sum()  # tr(W^T X^T X W)
    resid_sum = stats.sum_tgt - W_of(stats.sum_src)
    ss_res = float(yy - 2 * cross + quad - 2 * c @ resid_sum + stats.n * c @ c)
    ss_res = max(ss_res, 0.0)
    ss_tot = float(yy - stats.sum_tgt @ stats.sum_tgt / max(stats.n, 1))
    return {
        "relative_error": math.sqrt(ss_res / float(yy)) if yy > 0 else math.nan,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
    }


def _check(stats: GramStats, method: str, rank: Any, holdout: float) -> None:
    if not isinstance(stats, GramStats):
        raise UnlockLensError(f"stats must be a GramStats, got {type(stats).__name__}")
    if method not in STATS_METHODS:
        known = ", ".join(sorted(STATS_METHODS))
        dense = " (fit it with fit_alignment on the rows)" if method in ALIGNMENT_METHODS else ""
        raise UnlockLensError(
            f"method {method!r} has no fit from statistics{dense}; known methods: {known}"
        )
    if holdout:
        raise UnlockLensError(
            f"holdout={holdout} needs the rows, which statistics do not keep: accumulate held-out "
            "rows into a second GramStats and score the map with stats_metrics(map, heldout)"
        )
    if stats.n < 2:
        raise UnlockLensError(f"need at least 2 paired rows (prompts) to fit a map, got n={stats.n}")
    if method == "identity" and stats.d_src != stats.d_tgt:
        raise UnlockLensError(
            f"method 'identity' needs equal widths but d_src={stats.d_src} != d_tgt={stats.d_tgt}; "
            "use 'svd', 'procrustes', 'cca' or 'ridge' between models of different width"
        )
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise UnlockLensError(f"rank must be an int, got {rank!r}")
    if rank < 1:
        raise UnlockLensError(f"rank must be >= 1, got rank={rank}")
    limit = min(stats.n, stats.d_src, stats.d_tgt)
    if method not in _RANK_FREE and rank > limit:
        raise UnlockLensError(
            f"rank={rank} exceeds the limit min(n_train={stats.n}, d_src={stats.d_src}, "
            f"d_tgt={stats.d_tgt}) = {limit}; lower rank or add prompts"
        )
    finite = all(bool(torch.isfinite(t).all()) for t in (stats.src_src, stats.src_tgt, stats.tgt_tgt))
    if not finite:
        raise UnlockLensError("the statistics hold non-finite sums (overflow?); re-accumulate them")


def fit_from_stats(
    stats: GramStats,
    method: str = "svd",
    rank: int = 16,
    centered: bool = False,
    *,
    holdout: float = 0.0,
    source_layer: int | None = None,
    target_layer: int | None = None,
    **kwargs: Any,
) -> LayerMap:
    """The map :func:`~.base.fit_alignment` would fit on the rows behind ``stats``.

    Same methods, defaults, rank limit (``rank <= min(n, d_src, d_tgt)`` for the rank-k
    methods) and ``train_*`` metrics; ``kwargs`` go to the method (``eps``,
    ``scale_by_correlation`` for cca, ``alpha`` for ridge). ``holdout`` must be 0: see the
    module docstring for scoring held-out rows.
    """
    _check(stats, method, rank, holdout)
    fitted = STATS_METHODS[method](stats, rank, centered, **kwargs)
    fitted.source_layer = source_layer
    fitted.target_layer = target_layer
    scores = stats_metrics(fitted, stats)
    fitted.metrics = {
        **fitted.metrics,
        "n_train": float(stats.n),
        "train_relative_error": scores["relative_error"],
        "train_r2": scores["r2"],
    }
    return fitted
