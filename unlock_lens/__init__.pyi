"""Public API of unlock_lens (loaded lazily, see __init__.py)."""

from . import evaluate as evaluate
from .activations import (
    Variant as Variant,
    capture as capture,
    final_logits as final_logits,
)
from .align import (
    GramStats as GramStats,
    LayerMap as LayerMap,
    fit_alignment as fit_alignment,
    fit_from_stats as fit_from_stats,
)
from .align.layers import (
    AlignSpec as AlignSpec,
    LayerPairing as LayerPairing,
    depth_match as depth_match,
    fit_layer_maps as fit_layer_maps,
    fit_layer_maps_from_stats as fit_layer_maps_from_stats,
    map_directions as map_directions,
)
from .controls import (
    random_like as random_like,
)
from .errors import (
    ArtifactError as ArtifactError,
    ModelMismatchError as ModelMismatchError,
    SanityCheckError as SanityCheckError,
    UnlockLensError as UnlockLensError,
)
from .evaluate import (
    EvalResults as EvalResults,
    answers_match as answers_match,
    extract_answer as extract_answer,
    load_dataset as load_dataset,
    select_alpha as select_alpha,
    split_problems as split_problems,
)
from .export import (
    export_pack as export_pack,
)
from .generation import (
    generate as generate,
)
from .masterkey import (
    MasterKey as MasterKey,
    extract_masterkey as extract_masterkey,
)
from .models import (
    load_gguf as load_gguf,
    load_model as load_model,
)
from .pack import (
    CapabilityPack as CapabilityPack,
)
from .prompts import (
    PromptFormat as PromptFormat,
    TemplateFormat as TemplateFormat,
    get_format as get_format,
)
from .protocol import (
    Protocol as Protocol,
    get_protocol as get_protocol,
)
from .steer import (
    Steering as Steering,
    edit_residual as edit_residual,
)
from .streaming import (
    capture_to_disk as capture_to_disk,
)
from .unlock import (
    Unlock as Unlock,
    align_key as align_key,
    build_pack as build_pack,
)

__all__ = [
    "AlignSpec",
    "ArtifactError",
    "CapabilityPack",
    "EvalResults",
    "LayerMap",
    "LayerPairing",
    "MasterKey",
    "ModelMismatchError",
    "PromptFormat",
    "SanityCheckError",
    "Steering",
    "Unlock",
    "UnlockLensError",
    "Variant",
    "align_key",
    "answers_match",
    "build_pack",
    "capture",
    "capture_to_disk",
    "depth_match",
    "edit_residual",
    "evaluate",
    "export_pack",
    "extract_answer",
    "extract_masterkey",
    "final_logits",
    "fit_alignment",
    "fit_layer_maps",
    "generate",
    "get_format",
    "load_dataset",
    "load_gguf",
    "load_model",
    "map_directions",
    "random_like",
    "select_alpha",
    "split_problems",
]
