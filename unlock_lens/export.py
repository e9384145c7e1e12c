"""Export a CapabilityPack's transferred key for other engines and steering libraries.

Three formats, each carrying the same provenance (:func:`provenance`):

``gguf``        a llama.cpp control vector (``--control-vector FILE``): per-layer *additive*
                directions. It is an approximation of the pack's steering (see below).
``vllm``        TransformerLens 4 vLLM intervention specs (``RemoteBridge.forward(...,
                intervene=specs)``): exact, or refused, never approximated.
``safetensors`` the mapped directions r^(t) (and the additive vectors where defined) with
                JSON metadata, for ``steering-vectors``, ``repeng`` or your own hooks.

The additive approximation
--------------------------
llama.cpp and vLLM add a fixed vector ``v_t`` to the residual stream; only ``unit`` and
``raw`` steering are additive. This module uses, per target layer t, r_hat = r / ||r||::

    raw     v_t = alpha * r                       (exact)
    unit    v_t = alpha * r_hat                   (exact)
    resid   v_t = alpha * mean||h_t|| * r_hat      (||h|| replaced by its mean)
    rotate  v_t = alpha * mean||h_t|| * r_hat      (first order in alpha)

For ``rotate``, ``h' = ||h|| (h_hat + alpha r_hat) / ||h_hat + alpha r_hat||
= h + alpha ||h|| (r_hat - (h_hat . r_hat) h_hat) + O(alpha^2)``: the additive vector keeps the
step along r_hat and drops the norm-preserving correction (for r ⟂ h the added vector is
larger by sqrt(1 + alpha^2) and the norm grows by that factor). ``mean||h_t||`` is the mean
norm of the last-prompt-token state at hook ``blocks.{t}.hook_resid_post`` over prompts in
the target's format (:func:`measure_resid_norms`) — the states the paper's edit turns — or
given by the caller. Pass ``norms`` explicitly: no default scale is invented.

Positions: llama.cpp adds the vector at *every* position (prompt and generated tokens), unlike
the paper's ``last_prompt`` edit; the GGUF metadata records both.

llama.cpp layer numbering (checked against ``common/common.cpp``
``common_control_vector_load_one`` and ``src/llama-adapter.cpp``): tensor ``direction.N``
(N >= 1, 1-D F32) is loaded into ``tensors[N]`` and added by ``build_cvec(cur, il=N)`` right
after block N's final residual add, i.e. to the output of the *0-based* block N = our
``blocks.N.hook_resid_post``. ``direction.0`` is rejected by the loader and block 0's output
can never be steered; a ``resid_pre`` direction at layer t is block t-1's output, so it is
written as ``direction.{t-1}``. Unreachable layers are dropped with a warning (or refused
with ``strict=True``) and listed in the file's metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from unlock_lens.activations import capture, hook_name
from unlock_lens.artifacts import (
    atomic_write_bytes,
    library_version,
    load_artifact,
    save_artifact,
)
from unlock_lens.errors import ArtifactError, UnlockLensError
from unlock_lens.interventions import get_edit, selects
from unlock_lens.pack import CapabilityPack

ExportFormat = Literal["gguf", "vllm", "safetensors"]
DIRECTIONS_KIND = "SteeringDirections"
VLLM_SPEC_FORMAT = "transformer_lens.vllm.intervene/1"
_GGUF_META_KEY = "unlock_lens.provenance"

# ---- provenance ---------------------------------------------------------------------------


def provenance(pack: CapabilityPack, *, alpha: float | None = None) -> dict[str, Any]:
    """Everything needed to trace an export back to its key, maps and settings (JSON-safe).

    Source/target ids and shapes, weight modes, hook names per layer, the target->source layer
    map, rank and method per layer, alpha / normalisation / positions, the key's and the
    alignment's prompt-set hashes, and the library version. Keys that the pack does not carry
    are ``None`` rather than guessed.
    """
    key, maps = pack.key, pack.maps
    ranks = {str(t): int(m.rank) for t, m in sorted(maps.items())}
    methods = sorted({m.method for m in maps.values()})
    centered = sorted({bool(m.centered) for m in maps.values()})
    rank_values = sorted(set(ranks.values()))
    return {
        "library": "unlock_lens",
        "library_version": library_version(),
        "source": key.source.to_dict(),
        "source_unlocked_id": key.source_unlocked_id,
        "target": pack.target.to_dict(),
        "weight_mode": {"source": key.source.weight_mode, "target": pack.target.weight_mode},
        "hook": key.hook,
        "source_hooks": {str(s): hook_name(s, key.hook) for s in key.layers},
        "target_hooks": {str(t): hook_name(t, key.hook) for t in sorted(maps)},
        "layer_map": {str(t): m.source_layer for t, m in sorted(maps.items())},
        "rank": rank_values[0] if len(rank_values) == 1 else ranks,
        "rank_per_layer": ranks,
        "method": methods[0] if len(methods) == 1 else methods,
        "centered": centered[0] if len(centered) == 1 else centered,
        "alignment": dict(pack.alignment),
        "key": {
            "capability": key.capability,
            "contrast": key.contrast,
            "aggregator": key.aggregator,
            "n_prompts": key.n_prompts,
            "locked_format": (key.locked_format or {}).get("name"),
            "unlocked_format": (key.unlocked_format or {}).get("name"),
        },
        "target_format": (pack.target_format or {}).get("name"),
        "alpha": float(pack.alpha if alpha is None else alpha),
        "normalisation": pack.normalisation,
        "positions": pack.positions,
        "prompt_hash": {"key": key.prompt_hash or None,
                        "alignment": pack.alignment.get("prompt_hash")},
    }


# ---- the additive approximation ------------------------------------------------------------


def measure_resid_norms(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    hook: str = "resid_post",
    batch_size: int = 16,
) -> dict[int, float]:
    """Mean ``||h||`` of the last-prompt-token state at each layer's hook, over ``prompts``.

    Render the prompts in the target's (locked) format first: those are the states that the
    ``rotate`` / ``resid`` edit scales by.
    """
    H = capture(model, prompts, layers, hook=hook, batch_size=batch_size)  # type: ignore[arg-type]
    norms = H.norm(dim=-1).mean(0)
    return {int(layer): float(norms[j]) for j, layer in enumerate(layers)}


def additive_directions(
    pack: CapabilityPack,
    *,
    alpha: float | None = None,
    norms: Mapping[int, float] | None = None,
) -> dict[int, Float[Tensor, " d_tgt"]]:
    """Per target layer, the vector an additive engine should add (see the module docstring).

    ``norms`` (mean residual norm per target layer) is required for ``rotate`` and ``resid``.
    """
    alpha = float(pack.alpha if alpha is None else alpha)
    edit = get_edit(pack.normalisation)
    out: dict[int, Tensor] = {}
    for t, r in pack.target_directions().items():
        scale = None
        if edit.norm_scaled:
            if norms is None or t not in norms:
                raise UnlockLensError(
                    f"normalisation {edit.name!r} scales the step by ||h||, which an additive vector "
                    f"cannot follow; pass norms={{layer: mean ||h||}} covering layer {t} (CLI: "
                    "--target MODEL measures them, or --norms FILE.json; Python: "
                    "measure_resid_norms(target_model, prompts, layers)), or re-align with "
                    "--normalisation unit"
                )
            scale = float(norms[t])
            if not np.isfinite(scale) or scale <= 0:
                raise UnlockLensError(f"norm for layer {t} must be a positive number, got {scale}")
        out[t] = edit.vector(r.detach().cpu(), alpha, scale)
    return out


# ---- llama.cpp control vector --------------------------------------------------------------


def llama_cpp_index(layer: int, hook: str = "resid_post") -> int | None:
    """llama.cpp ``direction.N`` index for our hook at ``layer``; None if it cannot be steered."""
    index = layer if hook == "resid_post" else layer - 1
    return index if index >= 1 else None


def _atomic_path_write(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_control_vector_gguf(
    pack: CapabilityPack,
    path: str | Path,
    *,
    alpha: float | None = None,
    norms: Mapping[int, float] | None = None,
    model_hint: str | None = None,
    strict: bool = False,
) -> Path:
    """Write a llama.cpp control-vector GGUF of the additive approximation (atomic).

    ``model_hint`` (llama.cpp writes its architecture name, e.g. ``llama``) defaults to the
    target's model id; llama.cpp's loader does not read it. Layers llama.cpp cannot steer
    (block 0's output) are dropped with a warning, or refused with ``strict=True``.
    """
    import gguf

    vectors = additive_directions(pack, alpha=alpha, norms=norms)
    hook = pack.key.hook
    placed: dict[int, np.ndarray] = {}
    dropped = []
    for t, v in sorted(vectors.items()):
        index = llama_cpp_index(t, hook)
        if index is None:
            dropped.append(t)
        else:
            placed[index] = v.numpy().astype(np.float32)
    if dropped:
        msg = (
            f"llama.cpp cannot steer {hook_name(dropped[0], hook)} (it has no control-vector slot "
            f"for block 0's output); target layers {dropped} are left out of the GGUF"
        )
        if strict:
            raise UnlockLensError(msg + " (strict=True; CLI --strict)")
        warnings.warn(msg + " (CLI --strict refuses instead)", stacklevel=2)
    if not placed:
        raise UnlockLensError("no target layer of this pack is reachable by a llama.cpp control vector")
    meta = provenance(pack, alpha=alpha)
    meta.update(
        format="llama.cpp control vector",
        applied_positions="all",
        additive_approximation=get_edit(pack.normalisation).norm_scaled,
        norms={str(t): float(norms[t]) for t in sorted(vectors) if norms and t in norms} or None,
        llama_cpp_layers={str(t): llama_cpp_index(t, hook) for t in sorted(vectors)},
        dropped_layers=dropped,
    )
    hint = model_hint or pack.target.model_id

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch="controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_int32("controlvector.layer_count", len(placed))
        writer.add_string(_GGUF_META_KEY, json.dumps(meta, sort_keys=True))
        for index, v in sorted(placed.items()):
            writer.add_tensor(f"direction.{index}", v)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return _atomic_path_write(Path(path), write)


def read_control_vector_gguf(path: str | Path) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """``({llama.cpp index N: direction.N}, metadata)`` from a control-vector GGUF.

    Applies llama.cpp's own checks (architecture, ``direction.N`` names with N >= 1, 1-D F32,
    equal widths), so a file that passes loads in llama.cpp.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    if field("general.architecture") != "controlvector":
        raise ArtifactError(f"{path} is not a control-vector GGUF (architecture {field('general.architecture')!r})")
    out: dict[int, np.ndarray] = {}
    width = None
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) == 0:
            raise ArtifactError(f"{path}: tensor {t.name!r} is not a valid direction.N (N >= 1)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise ArtifactError(f"{path}: {t.name} must be a 1-D F32 tensor")
        data = np.array(t.data, dtype=np.float32).reshape(-1)
        if width is not None and data.size != width:
            raise ArtifactError(f"{path}: {t.name} has width {data.size}, others {width}")
        width = data.size
        out[int(index)] = data
    meta: dict[str, Any] = {
        "model_hint": field("controlvector.model_hint"),
        "layer_count": field("controlvector.layer_count"),
    }
    raw = field(_GGUF_META_KEY)
    if raw is not None:
        meta["provenance"] = json.loads(raw)
    return out, meta


# ---- TransformerLens vLLM intervention specs ----------------------------------------------


def vllm_hook_name(layer: int, hook: str = "resid_post") -> str:
    """vLLM-side name of our hook: ``blocks.{l}.hook_out`` (``hook_resid_post`` is a bridge
    alias the vLLM driver does not list; ``hook_in`` never fires there, so ``resid_pre`` at l
    is block l-1's output)."""
    if hook == "resid_post":
        return f"blocks.{layer}.hook_out"
    if layer < 1:
        raise UnlockLensError(
            "blocks.0.hook_resid_pre (the embedding output) has no vLLM intervention point"
        )
    return f"blocks.{layer - 1}.hook_out"


def vllm_intervention_specs(
    pack: CapabilityPack,
    *,
    alpha: float | None = None,
    prompt_length: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``{hook: {"op": "add", "value": [...], ["pos": ...]}}`` reproducing the pack's steering.

    TransformerLens's vLLM driver applies ``x * scale + bias`` per hook, so only additive steering
    (``unit``, ``raw``) is expressible; ``rotate`` / ``resid`` are refused. Positions:
    ``all`` -> no ``pos`` (every position of every forward); ``last_prompt`` / ``prompt`` ->
    ``pos`` for one prompt of ``prompt_length`` tokens (the driver's compiled path, batch 1,
    ``boot_vllm(enable_position_interventions=True)``; a driver forward is one prefill);
    ``final`` (decode steps only) is refused.
    """
    alpha = float(pack.alpha if alpha is None else alpha)
    norm_kind, positions = pack.normalisation, pack.positions
    if not get_edit(norm_kind).additive:
        raise UnlockLensError(
            f"normalisation {norm_kind!r} depends on each state h ({get_edit(norm_kind).doc}); "
            "vLLM intervention specs are affine with fixed per-hook values (x * scale + bias), so it "
            "cannot be expressed exactly. Re-align with --normalisation unit (Python: "
            "normalisation='unit'), export the documented additive approximation with --format gguf "
            "or safetensors, or steer on the torch path (unlock-lens steer / generate)"
        )
    pos: int | list[int] | None = None
    if positions in ("last_prompt", "prompt"):
        if prompt_length is None or int(prompt_length) < 1:
            raise UnlockLensError(
                f"positions={positions!r} edits prompt positions only, which a vLLM spec expresses "
                "with 'pos' for one known prompt: pass prompt_length (CLI --prompt-length N: the "
                "single prompt's token count; batch 1, boot_vllm(enable_position_interventions=True)), "
                "or re-align with --positions all"
            )
        n = int(prompt_length)
        picked = selects(positions, torch.arange(n), n - 1).nonzero().flatten().tolist()
        pos = picked[0] if positions == "last_prompt" else picked
    elif positions == "final":
        raise UnlockLensError(
            "positions='final' edits decode steps only; the TransformerLens vLLM driver runs "
            "single prefill forwards (max_new_tokens=1) and has no decode-step intervention"
        )
    if alpha == 0:
        return {}
    specs: dict[str, dict[str, Any]] = {}
    for t, v in sorted(additive_directions(pack, alpha=alpha).items()):
        spec: dict[str, Any] = {"op": "add", "value": [float(x) for x in v.tolist()]}
        if pos is not None:
            spec["pos"] = pos
        specs[vllm_hook_name(t, pack.key.hook)] = spec
    return specs


def export_vllm_specs(
    pack: CapabilityPack,
    path: str | Path,
    *,
    alpha: float | None = None,
    prompt_length: int | None = None,
) -> Path:
    """Write ``{"format", "intervene", "boot_vllm_kwargs", "provenance"}`` as JSON (atomic)."""
    specs = vllm_intervention_specs(pack, alpha=alpha, prompt_length=prompt_length)
    doc = {
        "format": VLLM_SPEC_FORMAT,
        "intervene": specs,
        "boot_vllm_kwargs": {"enable_position_interventions": pack.positions != "all"},
        "prompt_length": prompt_length if pack.positions != "all" else None,
        "provenance": provenance(pack, alpha=alpha),
    }
    path = Path(path)
    atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    return path


# ---- plain safetensors ---------------------------------------------------------------------


def export_directions_safetensors(
    pack: CapabilityPack,
    path: str | Path,
    *,
    alpha: float | None = None,
    norms: Mapping[int, float] | None = None,
) -> Path:
    """Per-layer ``direction.{t}`` (r^(t), exactly the pack's) and, where defined,
    ``additive.{t}`` (the vector to add; see the module docstring), plus provenance (atomic).

    Layer ``t`` is the 0-based decoder block whose output the hook edits (``hook_resid_post``),
    the index ``steering-vectors`` (``layer_type="decoder_block"``) and ``repeng`` use.
    """
    directions = pack.target_directions()
    tensors = {f"direction.{t}": r.detach().float().cpu().contiguous() for t, r in directions.items()}
    additive: dict[int, Tensor] = {}
    edit = get_edit(pack.normalisation)
    if edit.additive or (edit.norm_scaled and norms is not None):
        additive = additive_directions(pack, alpha=alpha, norms=norms)
        tensors.update({f"additive.{t}": v.contiguous() for t, v in additive.items()})
    meta = provenance(pack, alpha=alpha)
    meta.update(
        layers=sorted(directions),
        additive_layers=sorted(additive),
        norms={str(t): float(norms[t]) for t in sorted(directions) if norms and t in norms} or None,
    )
    return save_artifact(path, DIRECTIONS_KIND, tensors, meta)


def load_exported_directions(
    path: str | Path,
) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[str, Any]]:
    """``(directions, additive, metadata)`` from :func:`export_directions_safetensors` (hash-checked)."""
    tensors, meta = load_artifact(path, DIRECTIONS_KIND)
    directions = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("direction.")}
    additive = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("additive.")}
    return directions, additive, meta


# ---- one entry point for the CLI -----------------------------------------------------------


def _read_norms(norms: Mapping[int, float] | str | Path | None) -> dict[int, float] | None:
    if norms is None:
        return None
    if isinstance(norms, Mapping):
        return {int(k): float(v) for k, v in norms.items()}
    try:
        data = json.loads(Path(norms).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UnlockLensError(f"cannot read norms from {norms}: {err}") from err
    return {int(k): float(v) for k, v in data.items()}


def export_pack(
    pack_path: str | Path | CapabilityPack,
    fmt: ExportFormat,
    out: str | Path,
    *,
    alpha: float | None = None,
    norms: Mapping[int, float] | str | Path | None = None,
    model: Any = None,
    prompts: Sequence[str] | None = None,
    model_hint: str | None = None,
    prompt_length: int | None = None,
    strict: bool = False,
) -> Path:
    """Load a CapabilityPack and write it as ``gguf``, ``vllm`` (JSON) or ``safetensors``.

    ``norms``: a ``{layer: mean ||h||}`` mapping or a JSON file of one; or pass ``model`` (a
    loaded target or a name/path for ``load_model``) and ``prompts`` (questions, rendered in
    the pack's target format) to measure them. Only ``rotate`` / ``resid`` packs need them.
    """
    if fmt not in get_args(ExportFormat):
        raise UnlockLensError(f"unknown export format {fmt!r}; choose one of {get_args(ExportFormat)}")
    pack = pack_path if isinstance(pack_path, CapabilityPack) else CapabilityPack.load(pack_path)
    norm_map = _read_norms(norms)
    needs_norms = get_edit(pack.normalisation).norm_scaled and fmt != "vllm"
    if norm_map is None and needs_norms and model is not None:
        if not prompts:
            raise UnlockLensError("measuring residual norms needs prompts as well as the model")
        if isinstance(model, str | Path):
            from unlock_lens.models import load_model

            model = load_model(str(model))
        pack.check_model(model)
        from unlock_lens.prompts import PromptFormat, default_formats

        fmt_obj = (PromptFormat.from_dict(pack.target_format) if pack.target_format
                   else default_formats(model.tokenizer)[0])
        rendered = fmt_obj.render_all(list(prompts), model.tokenizer)
        norm_map = measure_resid_norms(model, rendered, sorted(pack.maps), hook=pack.key.hook)
    if fmt == "gguf":
        return export_control_vector_gguf(pack, out, alpha=alpha, norms=norm_map,
                                          model_hint=model_hint, strict=strict)
    if fmt == "vllm":
        return export_vllm_specs(pack, out, alpha=alpha, prompt_length=prompt_length)
    return export_directions_safetensors(pack, out, alpha=alpha, norms=norm_map)


__all__ = [
    "ExportFormat",
    "additive_directions",
    "export_control_vector_gguf",
    "export_directions_safetensors",
    "export_pack",
    "export_vllm_specs",
    "llama_cpp_index",
    "load_exported_directions",
    "measure_resid_norms",
    "provenance",
    "read_control_vector_gguf",
    "vllm_hook_name",
    "vllm_intervention_specs",
]
