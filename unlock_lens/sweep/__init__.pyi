"""Public API of unlock_lens.sweep (loaded lazily)."""

from .pair import (
    MapBank as MapBank,
    SweepPair as SweepPair,
    load_pair as load_pair,
)
from .report import (
    sweep_heatmap as sweep_heatmap,
    write_sweep_report as write_sweep_report,
)
from .run import (
    SweepGrid as SweepGrid,
    SweepSettings as SweepSettings,
    layer_sets as layer_sets,
    register as register,
    run_sweep as run_sweep,
)

__all__ = [
    "MapBank",
    "SweepGrid",
    "SweepPair",
    "SweepSettings",
    "layer_sets",
    "load_pair",
    "register",
    "run_sweep",
    "sweep_heatmap",
    "write_sweep_report",
]
