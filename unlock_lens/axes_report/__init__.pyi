"""Public API of unlock_lens.axes_report (loaded lazily)."""

from .report import (
    behaviour_figure as behaviour_figure,
    examples_figure as examples_figure,
    fidelity_figure as fidelity_figure,
    write_transfer_report as write_transfer_report,
)
from .run import (
    DEFAULT_KINDS as DEFAULT_KINDS,
    QUICK_SIZES as QUICK_SIZES,
    ReportSettings as ReportSettings,
    check_settings as check_settings,
    run_transfer_report as run_transfer_report,
)

__all__ = [
    "DEFAULT_KINDS",
    "QUICK_SIZES",
    "ReportSettings",
    "behaviour_figure",
    "check_settings",
    "examples_figure",
    "fidelity_figure",
    "run_transfer_report",
    "write_transfer_report",
]
