"""Public API of unlock_lens.axes (loaded lazily)."""

from .pool import (
    SPLIT_FRACTIONS as SPLIT_FRACTIONS,
    neutral_requests as neutral_requests,
    request_fingerprint as request_fingerprint,
    request_pool as request_pool,
    split_of as split_of,
)
from .registry import (
    Axis as Axis,
    default_axes_path as default_axes_path,
    get_axis as get_axis,
    load_axes as load_axes,
    score_texts as score_texts,
)
from .scorers import (
    SCORER_PARAMS as SCORER_PARAMS,
    make_scorer as make_scorer,
)
