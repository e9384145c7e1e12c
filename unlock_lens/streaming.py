"""Capture to disk for prompt sets too large for memory: per-batch shards, resumable.

    capture_to_disk(model, prompts, layers, "acts/", batch_size=16)   # writes, or resumes
    X = load_capture("acts/")                                          # [n, L, d] float32
    for idx, rows in iter_shards("acts/"): ...                         # one batch at a time

The folder holds ``manifest.json`` (what is captured: model id and shape, weight mode,
prompt-set hash, layers, hook, batch size, steering fingerprint, and the batch plan) and one
``shard-NNNNN.safetensors`` artefact per batch (its rows and their prompt indices,
hash-checked). Every file is written atomically (temp file + rename; see
:mod:`unlock_lens.artifacts` for the temp-file pattern), so an interrupted run leaves only
whole shards. Running again with the same inputs skips every shard that loads and checks
out, and computes only the rest; a folder written for another model, prompt set, layer
list, hook, batch size or steering is refused with :class:`~unlock_lens.errors.UnlockLensError`
(use another folder, or delete it).

Memory: at most one batch of activation rows (``batch_size x len(layers) x d_model``
float32) is alive at any time while capturing. The batch plan and the numerics are those of
:func:`unlock_lens.activations.capture` with the same ``batch_size``, so
``load_capture(...)`` equals ``capture(...)`` bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlock_lens.activations import HookKind, check_layers, encode, iter_capture, plan_batches
from unlock_lens.artifacts import (
    atomic_write_bytes,
    content_hash,
    library_version,
    load_artifact,
    save_artifact,
)
from unlock_lens.errors import ArtifactError, UnlockLensError
from unlock_lens.model_info import ModelInfo

MANIFEST = "manifest.json"
SHARD_KIND = "ActivationShard"
MANIFEST_VERSION = 1
_IDENTITY = ("model", "prompt_hash", "n_prompts", "layers", "hook", "batch_size", "steering", "batches")


def full_prompt_hash(prompts: Sequence[str]) -> str:
    """sha256 over the prompts in order (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for p in prompts:
        b = p.encode()
        digest.update(len(b).to_bytes(8, "little"))
        digest.update(b)
    return digest.hexdigest()


def steering_fingerprint(steering: Any) -> str | None:
    """A hash of a Steering's directions and settings (None for no steering)."""
    if steering is None:
        return None
    tensors = {str(k): v.detach().float().cpu() for k, v in steering.directions.items()}
    settings = json.dumps([float(steering.alpha), steering.normalisation, steering.positions,
                           None if steering.layers is None else sorted(steering.layers),
                           steering.hook,
                           # the edit's dtype, named only when not the default (older fingerprints stay equal)
                           *([steering.edit_dtype] if getattr(steering, "edit_dtype", "float32") != "float32" else [])])
    return hashlib.sha256((content_hash(tensors) + settings).encode()).hexdigest()


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is unreadable ({err}); delete the folder and capture again") from err
    if not isinstance(manifest, dict) or manifest.get("kind") != "CaptureManifest":
        raise ArtifactError(f"{path} is not an unlock_lens capture manifest")
    if int(manifest.get("format_version", 0)) > MANIFEST_VERSION:
        raise ArtifactError(f"{path} has a newer manifest format: upgrade unlock-lens to read it")
    return manifest


def _shard_ok(folder: Path, i: int, idx: list[int]) -> bool:
    path = folder / shard_name(i)
    if not path.is_file():
        return False
    try:
        tensors, _ = load_artifact(path, SHARD_KIND)
    except ArtifactError:
        return False  # damaged: compute it again
    return tensors["indices"].tolist() == idx


def capture_to_disk(
    model: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | None,
    out_dir: str | Path,
    *,
    hook: HookKind = "resid_post",
    batch_size: int = 16,
    steering: Any = None,
    progress: bool | str = False,
) -> Path:
    """Capture final-token states batch by batch into ``out_dir``; resume if it has a manifest.

    Returns ``out_dir``. Only the batches without a valid shard are run.
    """
    folder = Path(out_dir)
    layers = check_layers(model, layers)
    batches = plan_batches(model, prompts, batch_size)
    encode(model, [prompts[batches[0][0]]])  # the longest prompt: refuse over-long input up front
    manifest = {
        "kind": "CaptureManifest",
        "format_version": MANIFEST_VERSION,
        "library_version": library_version(),
        "model": ModelInfo.of(model).to_dict(),
        "prompt_hash": full_prompt_hash(prompts),
        "n_prompts": len(prompts),
        "layers": layers,
        "hook": hook,
        "batch_size": int(batch_size),
        "d_model": int(model.cfg.d_model),
        "steering": steering_fingerprint(steering),
        "batches": batches,
        "shards": [shard_name(i) for i in range(len(batches))],
    }
    if (folder / MANIFEST).exists():
        old = _read_manifest(folder)
        differs = [k for k in _IDENTITY if old.get(k) != manifest[k]]
        if differs:
            raise UnlockLensError(
                f"{folder} holds a capture of another {', '.join(differs)} (it was written for "
                f"model {old.get('model', {}).get('model_id')!r}, {old.get('n_prompts')} prompts, "
                f"layers {old.get('layers')}): use another folder or delete this one"
            )
    else:
        atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    todo = [i for i, idx in enumerate(batches) if not _shard_ok(folder, i, idx)]
    if not todo:
        return folder
    number = {tuple(batches[i]): i for i in todo}
    for idx, rows in iter_capture(model, prompts, layers, hook=hook, batch_size=batch_size,
                                  progress=progress, steering=steering,
                                  batches=[batches[i] for i in todo]):
        i = number[tuple(idx)]
        save_artifact(
            folder / shard_name(i), SHARD_KIND,
            {"activations": rows, "indices": torch.tensor(idx, dtype=torch.long)},
            {"batch": i, "prompt_hash": manifest["prompt_hash"], "layers": layers},
        )
        del rows  # keep one batch alive at a time
    return folder


def iter_shards(
    out_dir: str | Path,
) -> Iterator[tuple[Int[Tensor, " b"], Float[Tensor, "b n_layers d_model"]]]:
    """``(prompt indices, rows)`` per shard, in batch order; refuses an incomplete capture."""
    folder = Path(out_dir)
    manifest = _read_manifest(folder)
    missing = [s for s in manifest["shards"] if not (folder / s).is_file()]
    if missing:
        raise UnlockLensError(
            f"{folder}: {len(missing)} of {len(manifest['shards'])} shards are missing (an "
            "interrupted capture): run capture_to_disk again with the same inputs to finish it"
        )
    for i, name in enumerate(manifest["shards"]):
        tensors, _ = load_artifact(folder / name, SHARD_KIND)
        if tensors["indices"].tolist() != manifest["batches"][i]:
            raise ArtifactError(f"{folder / name} does not hold batch {i} of the manifest; capture again")
        yield tensors["indices"], tensors["activations"]


def load_capture(out_dir: str | Path) -> Float[Tensor, "n n_layers d_model"]:
    """The whole capture as one ``[n, L, d]`` float32 tensor, rows in prompt order."""
    manifest = _read_manifest(Path(out_dir))
    out = torch.empty((manifest["n_prompts"], len(manifest["layers"]), manifest["d_model"]),
                      dtype=torch.float32)
    for idx, rows in iter_shards(out_dir):
        out[idx] = rows
    return out
