"""Fit linear maps that carry a source model's residual stream into a target model's.

``fit_alignment(X_src, X_tgt, method=..., rank=...)`` returns a :class:`LayerMap`; methods:
``svd`` (the UNLOCK authors'), ``procrustes``, ``cca``, ``ridge``, ``identity``.
"""

from unlock_lens.align.base import (
    ALIGNMENT_METHODS,
    LayerMap,
    fit_alignment,
    register_method,
)
from unlock_lens.align.cca import fit_cca
from unlock_lens.align.identity import fit_identity
from unlock_lens.align.procrustes import fit_procrustes, procrustes_rotation
from unlock_lens.align.ridge import fit_ridge
from unlock_lens.align.svd import fit_svd

__all__ = [
    "ALIGNMENT_METHODS",
    "LayerMap",
    "fit_alignment",
    "fit_cca",
    "fit_identity",
    "fit_procrustes",
    "fit_ridge",
    "fit_svd",
    "procrustes_rotation",
    "register_method",
]

# scikit-learn estimators (SVDAlignment, ...), imported lazily so the core stays torch-only
_ESTIMATORS = ("CCAAlignment", "LinearAlignment", "ProcrustesAlignment", "RidgeAlignment", "SVDAlignment")
__all__ += list(_ESTIMATORS)


def __getattr__(name: str):
    if name in _ESTIMATORS:
        from unlock_lens.align import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'unlock_lens.align' has no attribute {name!r}")
