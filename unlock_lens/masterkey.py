"""MasterKey: the per-layer capability direction of a source model.

For each source layer l, with h^(l) the block output at the last prompt token,

    mean (default):  m^(l) = (1/n) sum_i [h_U^(l)(x_i) - h_L^(l)(x_i)]          (no normalisation)
    pca:             first right singular vector of the centred n x d difference matrix,
                     sign flipped to agree with the mean difference

where U / L are the unlocked / locked variants: the same model with a CoT vs a direct prompt
(``contrast="prompt"``), or a post-trained vs a base model on the same prompts
(``contrast="model"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.activations import FinalLayer, HookKind, Variant, capture, check_layers
from unlock_lens.artifacts import library_version, load_artifact, save_artifact
from unlock_lens.errors import ArtifactError, UnlockLensError
from unlock_lens.model_info import ModelInfo
from unlock_lens.prompts import prompt_set_hash

Aggregator = Literal["mean", "pca"]


def aggregate_differences(
    diffs: Float[Tensor, "n n_layers d"], aggregator: Aggregator = "mean"
) -> Float[Tensor, "n_layers d"]:
    """Collapse per-prompt differences (unlocked - locked) into one direction per layer.

    Float32 result for any float input (float16 / bfloat16 are upcast first). Refuses a
    non-3-D or empty input and NaN/inf. ``mean`` of all-equal differences is that difference
    (all-zero differences give a zero direction, which :class:`~unlock_lens.steer.Steering`
    refuses); ``pca`` needs n >= 2 and some spread at every layer, and returns unit vectors.
    Deterministic: the same input gives the same output bit for bit on CPU.
    """
    if diffs.ndim != 3:
        raise UnlockLensError(f"differences must be [n, layers, d], got {tuple(diffs.shape)}")
    if diffs.shape[0] == 0:
        raise UnlockLensError("no differences to aggregate: pass at least one prompt")
    if not torch.isfinite(diffs).all():
        raise UnlockLensError("differences contain NaN/inf: check the captured activations")
    diffs = diffs.float()
    mean = diffs.mean(0)
    if aggregator == "mean":
        return mean
    if aggregator == "pca":
        if diffs.shape[0] < 2:
            raise UnlockLensError("the pca aggregator needs at least 2 prompts; use 'mean'")
        centred = diffs - mean
        # per layer: first right singular vector of the centred [n, d] matrix
        _, s, vh = torch.linalg.svd(centred.transpose(0, 1), full_matrices=False)
        # no spread at a layer (all differences equal): the first component is arbitrary
        scale = diffs.transpose(0, 1).flatten(1).norm(dim=-1).clamp_min(1e-30)
        flat = (s[:, 0] <= 1e-6 * scale).nonzero().flatten().tolist()
        if flat:
            raise UnlockLensError(
                f"the differences do not vary across prompts at layer index(es) {flat}: the "
                "pca direction is undefined there; use the 'mean' aggregator or more varied prompts"
            )
        first = vh[:, 0, :]
        sign = torch.sign((first * mean).sum(-1, keepdim=True))
        return first * torch.where(sign == 0, torch.ones_like(sign), sign)
    raise UnlockLensError(f"unknown aggregator {aggregator!r}; choose one of {get_args(Aggregator)}")


def spectral_entropy_rank(diffs: Float[Tensor, "n d"]) -> float:
    """Effective rank exp(H(p)) of a difference matrix, p = normalised squared singular values."""
    s = torch.linalg.svdvals(diffs.float())
    p = s.square() / s.square().sum().clamp_min(1e-30)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class MasterKey:
    """Per-layer directions ``Float[n_layers, d_model]`` of a source model plus provenance."""

    directions: Float[Tensor, "n_layers d_model"]
    layers: list[int]
    source: ModelInfo
    capability: str = "cot"
    contrast: Literal["prompt", "model"] = "prompt"
    aggregator: Aggregator = "mean"
    n_prompts: int = 0
    hook: HookKind = "resid_post"
    source_unlocked_id: str | None = None
    locked_format: dict[str, Any] | None = None
    unlocked_format: dict[str, Any] | None = None
    prompt_hash: str = ""
    effective_rank: list[float] = field(default_factory=list)
    final_layer: FinalLayer = "block"
    library_version: str = field(default_factory=library_version)

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.directions.shape[0] != len(self.layers):
            raise UnlockLensError(
                f"directions {tuple(self.directions.shape)} do not match {len(self.layers)} layers"
            )

    def direction(self, layer: int) -> Float[Tensor, " d_model"]:
        """The direction at source layer ``layer``."""
        try:
            return self.directions[self.layers.index(layer)]
        except ValueError:
            raise UnlockLensError(
                f"this key has no direction for layer {layer}; it covers layers {self.layers}"
            ) from None

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON metadata (for artefact files and capability packs)."""
        meta = {
            "layers": self.layers,
            "source": self.source.to_dict(),
            "capability": self.capability,
            "contrast": self.contrast,
            "aggregator": self.aggregator,
            "n_prompts": self.n_prompts,
            "hook": self.hook,
            "source_unlocked_id": self.source_unlocked_id,
            "locked_format": self.locked_format,
            "unlocked_format": self.unlocked_format,
            "prompt_hash": self.prompt_hash,
            "effective_rank": self.effective_rank,
            "final_layer": self.final_layer,
            "created_with": self.library_version,
            "dtype": str(self.directions.dtype),
        }
        return {"directions": self.directions}, meta

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> MasterKey:
        try:
            return cls(
                directions=tensors["directions"],
                layers=list(meta["layers"]),
                source=ModelInfo.from_dict(meta["source"]),
                capability=meta["capability"],
                contrast=meta["contrast"],
                aggregator=meta["aggregator"],
                n_prompts=int(meta["n_prompts"]),
                hook=meta["hook"],
                source_unlocked_id=meta.get("source_unlocked_id"),
                locked_format=meta.get("locked_format"),
                unlocked_format=meta.get("unlocked_format"),
                prompt_hash=meta.get("prompt_hash", ""),
                effective_rank=list(meta.get("effective_rank", [])),
                final_layer=meta.get("final_layer", "block"),
                library_version=meta.get("created_with", meta.get("library_version", "")),
            )
        except KeyError as err:
            raise ArtifactError(f"MasterKey data lacks the field {err}; re-create it") from None

    def save(self, path: str | Path) -> Path:
        """Write as one safetensors artefact (atomic)."""
        return save_artifact(path, "MasterKey", *self.to_parts())

    @classmethod
    def load(cls, path: str | Path) -> MasterKey:
        return cls.from_parts(*load_artifact(path, "MasterKey"))

    def check_model(self, model: Any) -> None:
        """Refuse a model this key was not extracted from (shape or weight mode)."""
        self.source.check(model, "this MasterKey")


def extract_masterkey(
    locked: Variant,
    unlocked: Variant,
    questions: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    aggregator: Aggregator = "mean",
    capability: str = "cot",
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
    final_layer: FinalLayer = "block",
) -> MasterKey:
    """Contrast ``unlocked`` against ``locked`` on the same questions, per layer.

    Same model in both variants → a prompt-driven key (e.g. CoT trigger vs direct prompt);
    two models (post-trained vs base, same architecture and size) → a model-driven key.
    Each variant's prompts are tokenised with its format's ``special_tokens`` (by its
    ``tokenizer_of`` model's tokenizer when set);
    ``final_layer="final_norm"`` reads the last layer after the final norm (the authors' code).
    """
    if len(questions) == 0:
        raise UnlockLensError("the question list is empty: a key needs at least one prompt")
    info_l, info_u = ModelInfo.of(locked.model), ModelInfo.of(unlocked.model)
    if (info_l.n_layers, info_l.d_model) != (info_u.n_layers, info_u.d_model):
        raise UnlockLensError(
            f"locked and unlocked models differ in shape ({info_l.n_layers}x{info_l.d_model} vs "
            f"{info_u.n_layers}x{info_u.d_model}): a model-driven key needs two variants of one model"
        )
    same_model = locked.model is unlocked.model
    if same_model and locked.format == unlocked.format:
        raise UnlockLensError(
            "locked and unlocked variants are identical (same model, same format): the contrast is zero"
        )
    layers = check_layers(locked.model, layers)
    h_l = capture(locked.model, locked.prompts(questions), layers, hook=hook, batch_size=batch_size,
                  progress="capture locked" if progress else False,
                  special_tokens=locked.special_tokens, final_layer=final_layer,
                  tokenizer_of=locked.tokenizer_of)
    h_u = capture(unlocked.model, unlocked.prompts(questions), layers, hook=hook, batch_size=batch_size,
                  progress="capture unlocked" if progress else False,
                  special_tokens=unlocked.special_tokens, final_layer=final_layer,
                  tokenizer_of=unlocked.tokenizer_of)
    return key_from_captures(h_l, h_u, locked, unlocked, questions, layers=layers, aggregator=aggregator,
                             capability=capability, hook=hook, final_layer=final_layer)


def key_from_captures(
    h_locked: Float[Tensor, "n n_layers d"],
    h_unlocked: Float[Tensor, "n n_layers d"],
    locked: Variant,
    unlocked: Variant,
    questions: Sequence[str],
    *,
    layers: Sequence[int],
    aggregator: Aggregator = "mean",
    capability: str = "cot",
    hook: HookKind = "resid_post",
    final_layer: FinalLayer = "block",
) -> MasterKey:
    """The MasterKey of captures already taken (row i of both = ``questions[i]`` through
    ``locked`` / ``unlocked``): what :func:`extract_masterkey` returns, without the forward
    passes, so a grid over n and aggregators captures once and slices."""
    if h_locked.shape != h_unlocked.shape or h_locked.shape[:2] != (len(questions), len(layers)):
        raise UnlockLensError(
            f"captures {tuple(h_locked.shape)} / {tuple(h_unlocked.shape)} do not match "
            f"{len(questions)} questions x {len(layers)} layers"
        )
    same_model = locked.model is unlocked.model
    diffs = h_unlocked - h_locked
    return MasterKey(
        directions=aggregate_differences(diffs, aggregator),
        layers=list(layers),
        source=ModelInfo.of(locked.model),
        capability=capability,
        contrast="prompt" if same_model else "model",
        aggregator=aggregator,
        n_prompts=len(questions),
        hook=hook,
        source_unlocked_id=None if same_model else ModelInfo.of(unlocked.model).model_id,
        locked_format=locked.format.to_dict(),
        unlocked_format=unlocked.format.to_dict(),
        prompt_hash=prompt_set_hash(locked.prompts(questions) + unlocked.prompts(questions)),
        effective_rank=[spectral_entropy_rank(diffs[:, j]) for j in range(len(layers))],
        final_layer=final_layer,
    )
