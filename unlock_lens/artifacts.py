"""Atomic, versioned, hash-checked artefact files: safetensors tensors + JSON metadata.

One artefact is one ``.safetensors`` file. Its header metadata holds a single JSON document
under the key ``unlock_lens`` with the artefact ``kind``, ``format_version``, the producing
``library_version``, a ``content_hash`` of every tensor, and the artefact's own fields.
Writes go to a temporary file in the same folder and are renamed into place, so a crash
mid-save leaves any older file intact. No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unlock_lens.errors import ArtifactError

FORMAT_VERSION = 1
_META_KEY = "unlock_lens"


def library_version() -> str:
    try:
        return version("unlock-lens")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(
    path: str | Path, kind: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Save tensors + JSON-serialisable metadata as one artefact file, atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "content_hash": content_hash(tensors),
        **metadata,
    }
    try:
        text = json.dumps(header, sort_keys=True)
    except TypeError as err:
        raise ArtifactError(f"metadata for {kind} is not JSON-serialisable: {err}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: text})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artefact; returns (tensors, metadata). Raises ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no {kind} file at {path}: check the path (save one first?)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or "
            "corrupted: re-create it"
        ) from err
    if raw is None:
        raise ArtifactError(f"{path} has no unlock_lens metadata: it was not written by unlock_lens")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: metadata is not valid JSON ({err}); re-create the file") from err
    for field in ("kind", "format_version", "content_hash"):
        if field not in meta:
            raise ArtifactError(f"{path}: metadata lacks the field {field!r}; re-create the file")
    if meta["kind"] != kind:
        raise ArtifactError(f"{path} holds a {meta['kind']}, not a {kind}: pass the right file")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {meta['format_version']}, newer than this library's "
            f"{FORMAT_VERSION}: upgrade unlock-lens to read it"
        )
    if content_hash(tensors) != meta["content_hash"]:
        raise ArtifactError(
            f"{path}: tensor content does not match its recorded hash (the file was modified or "
            "damaged); re-create it"
        )
    return tensors, meta
