"""unlock_lens: extract a capability direction from one model, carry it to another, steer.

The method (UNLOCK): extract a MasterKey → align it into a target (LayerMap per layer) →
steer the target. Names are re-exported lazily so that importing the tensor-only core
(``unlock_lens.align``, ``unlock_lens.masterkey`` math) does not load model libraries.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_model": "unlock_lens.models",
    "load_gguf": "unlock_lens.models",
    "depth_match": "unlock_lens.align.layers",
    "PromptFormat": "unlock_lens.prompts",
    "get_format": "unlock_lens.prompts",
    "Variant": "unlock_lens.activations",
    "capture": "unlock_lens.activations",
    "final_logits": "unlock_lens.activations",
    "MasterKey": "unlock_lens.masterkey",
    "extract_masterkey": "unlock_lens.masterkey",
    "LayerMap": "unlock_lens.align",
    "fit_alignment": "unlock_lens.align",
    "Steering": "unlock_lens.steer",
    "edit_residual": "unlock_lens.steer",
    "generate": "unlock_lens.generation",
    "random_like": "unlock_lens.controls",
    "CapabilityPack": "unlock_lens.pack",
    "Unlock": "unlock_lens.unlock",
    "align_key": "unlock_lens.unlock",
    "build_pack": "unlock_lens.unlock",
    "evaluate": "unlock_lens.evaluate",
    "select_alpha": "unlock_lens.evaluate",
    "EvalResults": "unlock_lens.evaluate",
    "capture_to_disk": "unlock_lens.streaming",
    "export_pack": "unlock_lens.export",
    "load_dataset": "unlock_lens.evaluate",
    "split_problems": "unlock_lens.evaluate",
    "extract_answer": "unlock_lens.evaluate",
    "answers_match": "unlock_lens.evaluate",
    "UnlockLensError": "unlock_lens.errors",
    "ArtifactError": "unlock_lens.errors",
    "ModelMismatchError": "unlock_lens.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unlock_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
