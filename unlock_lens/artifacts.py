"""Atomic, versioned, hash-checked artefact files: safetensors tensors + JSON metadata.

One artefact is one ``.safetensors`` file. Its header metadata holds a single JSON document
under the key ``unlock_lens`` with the artefact ``kind``, ``format_version``, the producing
``library_version``, a ``content_hash`` of every tensor, and the artefact's own fields; a
second key, ``unlock_lens_sha256``, holds the sha256 of that JSON text, so a changed byte
anywhere in the file (tensor data, tensor header or metadata) is refused on load.

Integrity checks on load, each raising :class:`~unlock_lens.errors.ArtifactError` with the
path and the fix: missing file; truncated / unparsable safetensors; no unlock_lens
metadata; metadata hash mismatch; a required field missing (:data:`REQUIRED_FIELDS`, per
kind, dotted paths); wrong ``kind``; a ``format_version`` newer than :data:`FORMAT_VERSION`;
tensor hash mismatch; tensor shapes inconsistent with the recorded model sizes.

Writes go to a temporary file ``.<name>.<host>.<pid>.<random>.tmp`` in the same folder,
are fsynced and renamed into place (then the folder is fsynced), so a crash mid-save leaves
any older file intact. A writer killed outright (SIGKILL, ``os._exit``) can leave its temp
file behind; the next save to the same path deletes temp files of writers on this host that
are no longer running. Nothing else is ever written next to an artefact. No pickle is
involved anywhere (safetensors + JSON only).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unlock_lens.errors import ArtifactError

FORMAT_VERSION = 2
"""2: adds the ``unlock_lens_sha256`` metadata hash (version-1 files still load, unhashed)."""
_META_KEY = "unlock_lens"
_META_HASH_KEY = "unlock_lens_sha256"
TEMP_SUFFIX = ".tmp"

_MODEL_FIELDS = ("model_id", "n_layers", "d_model", "weight_mode")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "MasterKey": (
        "layers", "capability", "contrast", "aggregator", "n_prompts", "hook", "dtype",
        *(f"source.{f}" for f in _MODEL_FIELDS),
    ),
    "LayerMap": ("method", "rank", "centered", "d_src", "d_tgt", "dtype"),
    "CapabilityPack": (
        "key", "maps", "alpha", "normalisation", "positions",
        *(f"target.{f}" for f in _MODEL_FIELDS),
        *(f"key.source.{f}" for f in _MODEL_FIELDS),
        "key.layers", "key.hook", "key.dtype",
    ),
}
"""Metadata fields (dotted paths) an artefact of each kind must carry to load."""


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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale_temp_files(path: str | Path) -> list[Path]:
    """Temp files left next to ``path`` by writers on this host that are no longer running."""
    path = Path(path)
    prefix = _temp_prefix(path)
    out = []
    if not path.parent.is_dir():
        return out
    for f in path.parent.iterdir():
        name = f.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            out.append(f)
    return out


def _new_temp(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_files(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=TEMP_SUFFIX
    )
    os.close(fd)
    return tmp


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _commit(tmp: str, path: Path) -> None:
    # mkstemp creates 0600; give the file the mode any other new file gets (0666 & ~umask)
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename in the same folder."""
    path = Path(path)
    tmp = _new_temp(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        _commit(tmp, path)
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
    digest = hashlib.sha256(text.encode()).hexdigest()
    tmp = _new_temp(path)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: text, _META_HASH_KEY: digest})
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lookup(meta: dict[str, Any], dotted: str) -> bool:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_shapes(path: Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensor shapes must agree with the model sizes the metadata records."""

    def fail(msg: str) -> None:
        raise ArtifactError(f"{path}: {msg}; the file is inconsistent, re-create it")

    def check_key(prefix: str, key_meta: dict[str, Any]) -> None:
        d = tensors.get(f"{prefix}directions")
        if d is None:
            fail(f"the {kind} has no '{prefix}directions' tensor")
        expected = (len(key_meta["layers"]), int(key_meta["source"]["d_model"]))
        if tuple(d.shape) != expected:
            fail(f"key directions have shape {tuple(d.shape)}, metadata says {expected} "
                 "(layers x source d_model)")
        if str(d.dtype) != key_meta["dtype"]:
            fail(f"key directions are {d.dtype}, metadata says {key_meta['dtype']}")
        n = int(key_meta["source"]["n_layers"])
        if any(not 0 <= int(layer) < n for layer in key_meta["layers"]):
            fail(f"key layers {key_meta['layers']} are out of range for {n} source layers")

    if kind == "MasterKey":
        check_key("", meta)
    elif kind == "CapabilityPack":
        check_key("key.", meta["key"])
        d_src, d_tgt = int(meta["key"]["source"]["d_model"]), int(meta["target"]["d_model"])
        n_tgt = int(meta["target"]["n_layers"])
        for t in meta["maps"]:
            if not 0 <= int(t) < n_tgt:
                fail(f"map for target layer {t} is out of range for {n_tgt} target layers")
            sb, tb = tensors.get(f"map.{t}.source_basis"), tensors.get(f"map.{t}.target_basis")
            if sb is None or tb is None:
                fail(f"map {t} lacks its basis tensors")
            if sb.shape[0] != d_src or tb.shape[0] != d_tgt:
                fail(f"map {t} is {sb.shape[0]} -> {tb.shape[0]} wide, metadata says "
                     f"{d_src} -> {d_tgt} (source / target d_model)")


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artefact; returns (tensors, metadata). Raises ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no {kind} file at {path}: check the path (save one first?)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        raw, raw_hash = header.get(_META_KEY), header.get(_META_HASH_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or "
            "corrupted: re-create it"
        ) from err
    if raw is None:
        raise ArtifactError(f"{path} has no unlock_lens metadata: it was not written by unlock_lens")
    if raw_hash is not None and hashlib.sha256(raw.encode()).hexdigest() != raw_hash:
        raise ArtifactError(
            f"{path}: metadata does not match its recorded hash (the file was modified or "
            "damaged); re-create it"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: metadata is not valid JSON ({err}); re-create the file") from err
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: metadata is not a JSON object; re-create the file")
    for field in ("kind", "format_version", "content_hash"):
        if field not in meta:
            raise ArtifactError(f"{path}: metadata lacks the field {field!r}; re-create the file")
    if meta["kind"] != kind:
        raise ArtifactError(f"{path} holds a {meta['kind']}, not a {kind}: pass the right file")
    try:
        file_version = int(meta["format_version"])
    except (TypeError, ValueError):
        raise ArtifactError(
            f"{path}: format_version {meta['format_version']!r} is not an integer; re-create it"
        ) from None
    if file_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {file_version}, newer than this library's "
            f"{FORMAT_VERSION}: upgrade unlock-lens to read it"
        )
    if file_version >= 2 and raw_hash is None:
        raise ArtifactError(
            f"{path}: format version {file_version} needs a metadata hash "
            f"({_META_HASH_KEY!r}) and it is missing (damaged header?); re-create the file"
        )
    if content_hash(tensors) != meta["content_hash"]:
        raise ArtifactError(
            f"{path}: tensor content does not match its recorded hash (the file was modified or "
            "damaged); re-create it"
        )
    missing = [f for f in REQUIRED_FIELDS.get(kind, ()) if not _lookup(meta, f)]
    if missing:
        raise ArtifactError(
            f"{path}: {kind} metadata lacks the field(s) {missing}; it was written by another "
            "tool or an incompatible version: re-create it"
        )
    try:
        _check_shapes(path, kind, tensors, meta)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{path}: {kind} metadata is malformed ({err!r}); re-create it") from None
    return tensors, meta
