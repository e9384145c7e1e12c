"""What an artefact records about a model, and the check that refuses a mismatched one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unlock_lens.errors import ModelMismatchError


def weight_mode(model: Any) -> str:
    """``compat`` for a bridge in TransformerLens compatibility mode (folded LayerNorm,
    centred weights: a different residual basis), ``raw`` for HF weights as loaded."""
    return "compat" if getattr(model, "compatibility_mode", False) else "raw"


def model_id(model: Any) -> str:
    """Stable id: the one ``load_model`` recorded, else the config's model name."""
    explicit = getattr(model, "unlock_lens_model_id", None)
    if explicit:
        return str(explicit)
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    n_layers: int
    d_model: int
    weight_mode: str

    @classmethod
    def of(cls, model: Any) -> ModelInfo:
        return cls(model_id(model), int(model.cfg.n_layers), int(model.cfg.d_model), weight_mode(model))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(str(d["model_id"]), int(d["n_layers"]), int(d["d_model"]), str(d["weight_mode"]))

    def check(self, model: Any, what: str, *, strict_id: bool = False) -> None:
        """Raise ModelMismatchError if ``model`` cannot take an artefact made for ``self``."""
        other = ModelInfo.of(model)
        problems = []
        if other.d_model != self.d_model:
            problems.append(f"hidden size {other.d_model} != {self.d_model}")
        if other.n_layers != self.n_layers:
            problems.append(f"layer count {other.n_layers} != {self.n_layers}")
        if other.weight_mode != self.weight_mode:
            problems.append(
                f"weight mode {other.weight_mode!r} != {self.weight_mode!r} (the residual basis "
                "differs between a raw bridge and one in compatibility mode)"
            )
        if strict_id and other.model_id != self.model_id:
            problems.append(f"model id {other.model_id!r} != {self.model_id!r}")
        if problems:
            raise ModelMismatchError(
                f"{what} was made for {self.model_id!r} ({self.n_layers} layers, d_model "
                f"{self.d_model}, {self.weight_mode}) but the model given is {other.model_id!r}: "
                + "; ".join(problems)
                + ". Load the model it was made for, or re-run the alignment for this one"
                + (" (or, if these are the same weights under another name, pass strict_id=False)"
                   if len(problems) == 1 and problems[0].startswith("model id") else "")
                + "."
            )
