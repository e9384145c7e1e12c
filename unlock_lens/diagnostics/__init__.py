"""Diagnostics: what changed, where it acts, how alike the two models are.

- ``similarity``: principal angles, linear CKA (matrix over layers), CCA spectra, alignment
  fit quality, cosine to the target's native key (pure torch, no models).
- ``sharpening``: first-token entropy / top-k mass / KL between conditions, first and second
  word frequencies, output length, repetition, formatting failures.
- ``ablations``: layer / leave-one-out / band / rank / alpha / method sweeps on a KL proxy,
  with random-direction controls, reusing cached activations and logits.
- ``distribution_shift``: KL of the steered next-token distribution to the CoT-prompted one.

Names are re-exported lazily, so importing ``unlock_lens.diagnostics.similarity`` does not load
model libraries.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    # similarity
    "principal_angles": "similarity",
    "subspace_angles": "similarity",
    "mapped_subspace_angles": "similarity",
    "principal_angle_table": "similarity",
    "top_subspace": "similarity",
    "orthonormal_basis": "similarity",
    "energy_in_subspace": "similarity",
    "linear_cka": "similarity",
    "cka_matrix": "similarity",
    "cca_spectrum": "similarity",
    "cca_table": "similarity",
    "alignment_table": "similarity",
    "alignment_sweep": "similarity",
    "cosine_per_layer": "similarity",
    "key_cosines": "similarity",
    # sharpening
    "peak_mass": "sharpening",
    "first_token_stats": "sharpening",
    "first_token_frequencies": "sharpening",
    "first_token_logits": "sharpening",
    "kl_table": "sharpening",
    "summarise": "sharpening",
    "words": "sharpening",
    "word_frequencies": "sharpening",
    "repetition_rate": "sharpening",
    "generation_stats": "sharpening",
    # ablations
    "AblationSetup": "ablations",
    "prepare_ablation": "ablations",
    "proxy_scores": "ablations",
    "unlocked_tokens": "ablations",
    "single_layer_sweep": "ablations",
    "leave_one_out_sweep": "ablations",
    "band_sweep": "ablations",
    "rank_sweep": "ablations",
    "alpha_sweep": "ablations",
    "method_sweep": "ablations",
    # distribution shift
    "kl_divergence": "distribution_shift",
    "entropy": "distribution_shift",
    "first_token_shift": "distribution_shift",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
