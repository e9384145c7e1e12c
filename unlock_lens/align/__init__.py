"""Fit linear maps that carry a source model's residual stream into a target model's.

``fit_alignment(X_src, X_tgt, method=..., rank=...)`` returns a :class:`LayerMap`; methods:
``svd`` (the UNLOCK authors'), ``procrustes``, ``cca``, ``ridge``, ``identity``.
"""

import lazy_loader as lazy

# each method module registers its fit function in ALIGNMENT_METHODS when imported
from unlock_lens.align import cca, identity, procrustes, ridge, svd  # noqa: F401

# The scikit-learn estimators (SVDAlignment, ...) load on first use: scikit-learn adds ~2 s to
# the import. __init__.pyi lists every public name (the eager ones above too).
__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
