"""Artefact integrity: provenance fields present, every kind of damage refused with a clear
ArtifactError, model mismatches refused, no pickle in the package, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import unlock_lens
from unlock_lens.activations import Variant
from unlock_lens.align import LayerMap, fit_alignment
from unlock_lens.artifacts import (
    FORMAT_VERSION,
    REQUIRED_FIELDS,
    load_artifact,
    save_artifact,
    stale_temp_files,
)
from unlock_lens.errors import ArtifactError, ModelMismatchError
from unlock_lens.masterkey import MasterKey, extract_masterkey
from unlock_lens.pack import CapabilityPack
from unlock_lens.unlock import Unlock

ALIGN_Q = [f"Sara reads {a} pages a day for {b} days. How many pages?" for a, b in
           [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6)]]


@pytest.fixture(scope="module")
def key(tiny_models):
    qwen = tiny_models["qwen2"]
    return extract_masterkey(Variant(qwen, "direct"), Variant(qwen, "cot"), ALIGN_Q[:3])


@pytest.fixture(scope="module")
def pack(tiny_models):
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["qwen2-deep"], rank=2)
    return pipe.align(pipe.extract(ALIGN_Q[:3]), ALIGN_Q)


def _header(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata()
    return raw, json.loads(raw["unlock_lens"])


def _rewrite(path: Path, out: Path, edit, *, rehash: bool = True) -> Path:
    """Copy an artefact with its metadata edited and (by default) all hashes made consistent."""
    raw, meta = _header(path)
    tensors = {}
    with safe_open(str(path), framework="pt") as fh:
        for k in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[k] = fh.get_tensor(k)
    edit(meta)
    text = json.dumps(meta, sort_keys=True)
    header = {"unlock_lens": text}
    if rehash:
        header["unlock_lens_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    save_file(tensors, str(out), metadata=header)
    return out


def test_provenance_fields_are_recorded(key, pack, tmp_path, tiny_models):
    _, meta = _header(key.save(tmp_path / "key.safetensors"))
    assert meta["format_version"] == FORMAT_VERSION and meta["library_version"]
    assert meta["source"] == {"model_id": key.source.model_id, "n_layers": 3, "d_model": 64,
                              "weight_mode": "raw"}
    assert meta["dtype"] == "torch.float32" and meta["layers"] == [0, 1, 2]
    raw, meta = _header(pack.save(tmp_path / "pack.safetensors"))
    assert meta["target"]["n_layers"] == 5 and meta["target"]["d_model"] == 96
    assert meta["key"]["source"]["d_model"] == 64 and meta["key"]["dtype"] == "torch.float32"
    assert set(meta["maps"]) == {str(t) for t in range(5)}
    assert raw["unlock_lens_sha256"] == hashlib.sha256(raw["unlock_lens"].encode()).hexdigest()
    for kind, fields in REQUIRED_FIELDS.items():
        assert fields, kind
    X = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    _, meta = _header(fit_alignment(X, X, rank=2).save(tmp_path / "map.safetensors"))
    assert {"method", "rank", "centered", "content_hash", "kind", "format_version"} <= set(meta)


def test_truncation_at_every_region_is_refused(key, tmp_path):
    path = key.save(tmp_path / "key.safetensors")
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cuts = [0, 1, 7, 8, 9, 8 + header_len // 2, 8 + header_len, 8 + header_len + 1,
            8 + header_len + 100, len(data) - 4, len(data) - 1]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match=r"truncated|re-create"):
            MasterKey.load(bad)
    # extra trailing bytes are damage too
    (tmp_path / "long.safetensors").write_bytes(data + b"\0" * 8)
    with pytest.raises(ArtifactError):
        MasterKey.load(tmp_path / "long.safetensors")


@pytest.mark.parametrize("region", ["header", "data"])
def test_every_flipped_byte_is_refused(tmp_path, region):
    """No single flipped bit in the file gives a loadable artefact (exhaustive over bytes)."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(8, 4, generator=gen)
    path = fit_alignment(X, X @ torch.randn(4, 3, generator=gen), rank=2).save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    positions = range(0, header_end) if region == "header" else range(header_end, len(data))
    bad = tmp_path / "bad.safetensors"
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError):
            LayerMap.load(bad)
    assert LayerMap.load(path).rank == 2  # the original is fine


def test_metadata_edits_are_refused(key, tmp_path):
    path = key.save(tmp_path / "key.safetensors")

    def set_field(name, value):
        return lambda m: m.__setitem__(name, value)

    # a consistent-looking edit without updating the metadata hash
    edited = _rewrite(path, tmp_path / "a.safetensors", set_field("n_prompts", 999), rehash=False)
    with pytest.raises(ArtifactError, match="(lacks|needs) .*hash|hash"):
        MasterKey.load(edited)
    raw, meta = _header(path)
    # a metadata hash that does not match
    meta_text = raw["unlock_lens"].replace('"n_prompts": 3', '"n_prompts": 4')
    tensors = MasterKey.load(path).to_parts()[0]
    save_file(tensors, str(tmp_path / "b.safetensors"),
              metadata={"unlock_lens": meta_text, "unlock_lens_sha256": raw["unlock_lens_sha256"]})
    with pytest.raises(ArtifactError, match="metadata does not match its recorded hash"):
        MasterKey.load(tmp_path / "b.safetensors")
    # no unlock_lens metadata at all
    save_file(tensors, str(tmp_path / "c.safetensors"))
    with pytest.raises(ArtifactError, match="not written by unlock_lens"):
        MasterKey.load(tmp_path / "c.safetensors")


@pytest.mark.parametrize("field", ["dtype", "layers", "source.model_id", "source.d_model",
                                   "source.weight_mode", "hook", "content_hash", "kind"])
def test_missing_metadata_field_is_refused(key, tmp_path, field):
    path = key.save(tmp_path / "key.safetensors")

    def drop(meta):
        node = meta
        *parents, last = field.split(".")
        for p in parents:
            node = node[p]
        del node[last]

    bad = _rewrite(path, tmp_path / "bad.safetensors", drop)
    with pytest.raises(ArtifactError, match=f"lacks the field.*{field.split('.')[-1]}"):
        MasterKey.load(bad)


def test_pack_missing_target_info_is_refused(pack, tmp_path):
    path = pack.save(tmp_path / "pack.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors", lambda m: m["target"].pop("d_model"))
    with pytest.raises(ArtifactError, match="target.d_model"):
        CapabilityPack.load(bad)


def test_newer_version_and_wrong_kind_are_refused(key, tmp_path):
    path = key.save(tmp_path / "key.safetensors")
    newer = _rewrite(path, tmp_path / "newer.safetensors",
                     lambda m: m.__setitem__("format_version", FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="newer than this library's.*upgrade"):
        MasterKey.load(newer)
    with pytest.raises(ArtifactError, match="holds a MasterKey, not a LayerMap"):
        LayerMap.load(path)
    with pytest.raises(ArtifactError, match="holds a MasterKey, not a CapabilityPack"):
        CapabilityPack.load(path)
    with pytest.raises(ArtifactError, match="no MasterKey file"):
        MasterKey.load(tmp_path / "missing.safetensors")


def test_version_1_files_without_metadata_hash_still_load(key, tmp_path):
    path = key.save(tmp_path / "key.safetensors")
    old = _rewrite(path, tmp_path / "v1.safetensors",
                   lambda m: m.__setitem__("format_version", 1), rehash=False)
    assert torch.equal(MasterKey.load(old).directions, key.directions)


def test_shapes_inconsistent_with_recorded_model_are_refused(key, pack, tmp_path):
    path = key.save(tmp_path / "key.safetensors")
    bad = _rewrite(path, tmp_path / "wide.safetensors", lambda m: m["source"].__setitem__("d_model", 65))
    with pytest.raises(ArtifactError, match="inconsistent"):
        MasterKey.load(bad)
    bad = _rewrite(path, tmp_path / "dtype.safetensors", lambda m: m.__setitem__("dtype", "torch.float16"))
    with pytest.raises(ArtifactError, match="inconsistent"):
        MasterKey.load(bad)
    ppath = pack.save(tmp_path / "pack.safetensors")
    bad = _rewrite(ppath, tmp_path / "pack_wide.safetensors", lambda m: m["target"].__setitem__("d_model", 64))
    with pytest.raises(ArtifactError, match="inconsistent"):
        CapabilityPack.load(bad)
    bad = _rewrite(ppath, tmp_path / "pack_deep.safetensors", lambda m: m["target"].__setitem__("n_layers", 3))
    with pytest.raises(ArtifactError, match="out of range"):
        CapabilityPack.load(bad)


def test_model_mismatch_is_refused(key, pack, tmp_path, tiny_models):
    back_key = MasterKey.load(key.save(tmp_path / "key.safetensors"))
    back_key.check_model(tiny_models["qwen2"])
    with pytest.raises(ModelMismatchError, match="hidden size 96 != 64.*layer count 5 != 3"):
        back_key.check_model(tiny_models["qwen2-deep"])
    back = CapabilityPack.load(pack.save(tmp_path / "pack.safetensors"))
    with pytest.raises(ModelMismatchError, match="hidden size"):
        back.applied(tiny_models["qwen2"]).__enter__()
    with pytest.raises(ModelMismatchError), back.applied(tiny_models["gpt2"]):
        pass
    compat_like = back.target.__class__(back.target.model_id, 5, 96, "compat")
    with pytest.raises(ModelMismatchError, match="weight mode"):
        compat_like.check(tiny_models["qwen2-deep"], "this pack")


PICKLE_PATTERNS = [
    (re.compile(r"\bimport\s+(c?pickle|dill|joblib|cloudpickle|marshal|shelve)\b"), "pickle import"),
    (re.compile(r"\bfrom\s+(c?pickle|dill|joblib|cloudpickle|marshal|shelve)\b"), "pickle import"),
    (re.compile(r"\bpickle\."), "pickle use"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_no_pickle_anywhere_in_the_package():
    root = Path(unlock_lens.__file__).parent
    problems = []
    for f in sorted(root.rglob("*.py")):
        text = f.read_text()
        for pattern, what in PICKLE_PATTERNS:
            if pattern.search(text):
                problems.append(f"{f.relative_to(root)}: {what}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find(")", m.start()) + 200]
            if "weights_only=True" not in call.split("\n\n")[0]:
                problems.append(f"{f.relative_to(root)}: torch.load without weights_only=True")
        if re.search(r"pd\.read_pickle|\.to_pickle\(", text):
            problems.append(f"{f.relative_to(root)}: pandas pickle")
    assert not problems, problems


WRITER = textwrap.dedent("""
    import os, sys
    import torch
    import unlock_lens.artifacts as art

    def half_then_die(tensors, filename, metadata=None):
        from safetensors.torch import save
        data = save(tensors, metadata=metadata)
        with open(filename, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        os._exit(17)  # killed mid-save: no cleanup, no exception handlers

    art.save_file = half_then_die
    art.save_artifact(sys.argv[1], "MasterKeyLike", {"x": torch.ones(1000)}, {"note": "new"})
""")


def test_writer_killed_mid_save_leaves_old_file_intact(tmp_path):
    path = tmp_path / "thing.safetensors"
    save_artifact(path, "MasterKeyLike", {"x": torch.arange(10.0)}, {"note": "old"})
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == 17, proc.stderr
    assert path.read_bytes() == before
    tensors, meta = load_artifact(path, "MasterKeyLike")
    assert meta["note"] == "old" and torch.equal(tensors["x"], torch.arange(10.0))
    # the only other file is the dead writer's temp file, named by the documented pattern
    others = sorted(p.name for p in tmp_path.iterdir() if p != path)
    pattern = re.compile(rf"^\.thing\.safetensors\.{re.escape(socket.gethostname())}\.\d+\..+\.tmp$")
    assert len(others) == 1 and pattern.match(others[0]), others
    assert [p.name for p in stale_temp_files(path)] == others
    # the next save to that path clears it
    save_artifact(path, "MasterKeyLike", {"x": torch.zeros(3)}, {"note": "newer"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.safetensors"]
    assert load_artifact(path, "MasterKeyLike")[1]["note"] == "newer"


def test_failed_save_in_process_leaves_nothing(tmp_path, monkeypatch):
    import unlock_lens.artifacts as art

    path = tmp_path / "k.safetensors"
    save_artifact(path, "X", {"x": torch.ones(2)}, {})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "save_file", fail)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(path, "X", {"x": torch.zeros(2)}, {})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["k.safetensors"]
    with pytest.raises(ArtifactError, match="JSON-serialisable"):
        save_artifact(path, "X", {"x": torch.zeros(2)}, {"bad": object()})


def test_files_get_the_users_umask_not_0600(tmp_path):
    import os

    from unlock_lens.artifacts import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
