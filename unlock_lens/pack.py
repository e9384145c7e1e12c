"""CapabilityPack: a MasterKey, its per-layer maps into one target model, and how to steer there.

Plain data with its provenance; the one constructor from fitted maps is
:meth:`CapabilityPack.from_alignment`. It sits low in the module graph (below generation,
evaluation, exports and diagnostics), so all of them can type and read packs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from unlock_lens.activations import Variant, hook_name
from unlock_lens.align import LayerMap
from unlock_lens.align.layers import AlignSpec, map_directions
from unlock_lens.artifacts import content_hash, library_version, load_artifact, save_artifact
from unlock_lens.errors import ArtifactError
from unlock_lens.interventions import EditDtype
from unlock_lens.masterkey import MasterKey
from unlock_lens.model_info import ModelInfo
from unlock_lens.prompts import prompt_set_hash
from unlock_lens.steer import Normalisation, Positions, Steering


@dataclass
class CapabilityPack:
    """A MasterKey, its maps into one target model, and the steering settings to use there."""

    key: MasterKey
    maps: dict[int, LayerMap]
    target: ModelInfo
    alpha: float = 0.1
    normalisation: Normalisation = "rotate"
    positions: Positions = "last_prompt"
    edit_dtype: EditDtype = "float32"
    target_format: dict[str, Any] | None = None
    alignment: dict[str, Any] = field(default_factory=dict)
    library_version: str = field(default_factory=library_version)

    @classmethod
    def from_alignment(
        cls,
        key: MasterKey,
        maps: dict[int, LayerMap],
        *,
        source: Variant,
        target: Variant,
        questions: Sequence[str],
        spec: AlignSpec,
        alpha: float = 0.1,
        normalisation: Normalisation = "rotate",
        positions: Positions = "last_prompt",
        edit_dtype: EditDtype = "float32",
        **record: Any,
    ) -> CapabilityPack:
        """The one way a pack is made from fitted maps: it writes the whole provenance record.

        ``source`` / ``target``: the variants the maps were fitted on (their formats and the
        hashes of the rendered alignment prompts are recorded); ``record``: extra JSON-able
        fields (e.g. how the settings were selected).
        """
        return cls(
            key=key, maps=maps, target=ModelInfo.of(target.model), alpha=alpha,
            normalisation=normalisation, positions=positions, edit_dtype=edit_dtype,
            target_format=target.format.to_dict(),
            alignment={
                **spec.record(),
                "n_prompts": len(questions),
                "prompt_hash": prompt_set_hash(source.prompts(questions)),
                "target_prompt_hash": prompt_set_hash(target.prompts(questions)),
                "source_format": source.format.to_dict(),
                "hook_names": {str(t): hook_name(t, key.hook) for t in sorted(maps)},
                **record,
            },
        )

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the pack under the names its file stores them."""
        key_tensors, _ = self.key.to_parts()
        out = {f"key.{k}": v for k, v in key_tensors.items()}
        for t, layer_map in self.maps.items():
            m_tensors, _ = layer_map.to_tensors_and_meta()
            out.update({f"map.{t}.{k}": v for k, v in m_tensors.items()})
        return out

    @property
    def content_hash(self) -> str:
        """sha256 of the pack's tensors, equal to the ``content_hash`` its saved file records."""
        return content_hash(self.tensors())

    def target_directions(self) -> dict[int, Float[Tensor, " d_tgt"]]:
        """r^(t) = m^(s(t)) W_t for every mapped target layer."""
        return map_directions(self.key, self.maps)

    def steering(
        self,
        alpha: float | None = None,
        *,
        normalisation: Normalisation | None = None,
        positions: Positions | None = None,
        layers: Sequence[int] | None = None,
    ) -> Steering:
        """A Steering with this pack's directions and (overridable) settings."""
        return Steering(
            self.target_directions(),
            alpha=self.alpha if alpha is None else alpha,
            normalisation=normalisation or self.normalisation,
            positions=positions or self.positions,
            layers=layers,
            hook=self.key.hook,
            target=self.target,
            edit_dtype=self.edit_dtype,
        )

    def check_model(self, model: Any, *, strict_id: bool = True) -> None:
        """Refuse a target with another model id, hidden size, layer count or weight mode.

        ``strict_id=False`` accepts another id of the same shape (the same weights loaded
        under another name, e.g. a local copy of a hub model); the shape is still checked.
        """
        self.target.check(model, "this CapabilityPack", strict_id=strict_id)

    def applied(self, model: Any, *, strict_id: bool = True, **overrides: Any):
        """``with pack.applied(target_model): ...`` — checks the model, then steers it."""
        self.check_model(model, strict_id=strict_id)
        steering = self.steering(**overrides)
        if not strict_id:
            steering.target = None
        return steering.applied(model)

    def save(self, path: str | Path) -> Path:
        meta = {
            "key": self.key.to_parts()[1],
            "maps": {str(t): m.to_tensors_and_meta()[1] for t, m in self.maps.items()},
            "target": self.target.to_dict(),
            "alpha": self.alpha,
            "normalisation": self.normalisation,
            "positions": self.positions,
            "edit_dtype": self.edit_dtype,
            "target_format": self.target_format,
            "alignment": self.alignment,
            "created_with": self.library_version,
        }
        return save_artifact(path, "CapabilityPack", self.tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> CapabilityPack:
        tensors, meta = load_artifact(path, "CapabilityPack")
        try:
            key = MasterKey.from_parts(
                {k.removeprefix("key."): v for k, v in tensors.items() if k.startswith("key.")},
                meta["key"],
            )
            maps = {}
            for t, m_meta in meta["maps"].items():
                prefix = f"map.{t}."
                m_tensors = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
                maps[int(t)] = LayerMap.from_tensors(m_tensors, m_meta)
            return cls(
                key=key,
                maps=maps,
                target=ModelInfo.from_dict(meta["target"]),
                alpha=float(meta["alpha"]),
                normalisation=meta["normalisation"],
                positions=meta["positions"],
                edit_dtype=meta.get("edit_dtype", "float32"),
                target_format=meta.get("target_format"),
                alignment=dict(meta.get("alignment", {})),
                library_version=meta.get("created_with", meta.get("library_version", "")),
            )
        except KeyError as err:
            raise ArtifactError(f"{path}: pack lacks the field {err}; re-create it") from None
