"""Public API of unlock_lens.align."""

from .base import (
    ALIGNMENT_METHODS as ALIGNMENT_METHODS,
    LayerMap as LayerMap,
    fit_alignment as fit_alignment,
    register_method as register_method,
)
from .cca import fit_cca as fit_cca
from .contrasts import (
    add_contrast_rows as add_contrast_rows,
    contrast_pairs as contrast_pairs,
    contrast_stats as contrast_stats,
    fit_contrast_maps as fit_contrast_maps,
    leave_one_out as leave_one_out,
)
from .estimators import (
    CCAAlignment as CCAAlignment,
    LinearAlignment as LinearAlignment,
    ProcrustesAlignment as ProcrustesAlignment,
    RidgeAlignment as RidgeAlignment,
    SVDAlignment as SVDAlignment,
)
from .identity import fit_identity as fit_identity
from .layers import fit_layer_maps_from_stats as fit_layer_maps_from_stats
from .procrustes import fit_procrustes as fit_procrustes, procrustes_rotation as procrustes_rotation
from .ridge import fit_ridge as fit_ridge
from .stats import (
    GramStats as GramStats,
    fit_from_stats as fit_from_stats,
    stats_metrics as stats_metrics,
)
from .svd import fit_svd as fit_svd

__all__ = [
    "ALIGNMENT_METHODS",
    "CCAAlignment",
    "GramStats",
    "LayerMap",
    "LinearAlignment",
    "ProcrustesAlignment",
    "RidgeAlignment",
    "SVDAlignment",
    "add_contrast_rows",
    "contrast_pairs",
    "contrast_stats",
    "fit_alignment",
    "fit_cca",
    "fit_contrast_maps",
    "fit_from_stats",
    "fit_identity",
    "fit_layer_maps_from_stats",
    "fit_procrustes",
    "fit_ridge",
    "fit_svd",
    "leave_one_out",
    "procrustes_rotation",
    "register_method",
    "stats_metrics",
]
