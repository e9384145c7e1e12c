"""Tests for unlock_lens.models: loading and registry resolution."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import transformers

from unlock_lens import models
from unlock_lens.errors import UnlockLensError
from unlock_lens.models import (
    MODEL_REGISTRY,
    load_model,
    model_id,
    model_shape,
    resolve_model_dir,
)
from unlock_lens.random_models import ARCHITECTURES, build_random_model

N_LAYERS, D_MODEL = 3, 64


@pytest.fixture(scope="module")
def random_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random_models")
    return {
        arch: build_random_model(root / f"tiny-{arch}", arch, d_model=D_MODEL, n_layers=N_LAYERS)
        for arch in ARCHITECTURES
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_model_matches_hf_forward(random_dirs: dict[str, Path], arch: str) -> None:
    path = random_dirs[arch]
    bridge = load_model(path)
    assert not bridge.training
    assert model_shape(bridge) == (N_LAYERS, D_MODEL)
    assert model_id(bridge) == str(path.resolve())
    assert bridge.tokenizer.pad_token is not None
    assert f"blocks.{N_LAYERS - 1}.hook_resid_post" in bridge.hook_dict

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    tokens = torch.tensor([[1, 5, 17, 42, 99, 7, 3, 250]])
    with torch.no_grad():
        expected = hf(tokens).logits
        got = bridge(tokens, return_type="logits")
        _, cache = bridge.run_with_cache(
            tokens, names_filter=f"blocks.{N_LAYERS - 1}.hook_resid_post"
        )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"].shape == (1, 8, D_MODEL)


def test_model_id_falls_back_to_cfg_name(random_dirs: dict[str, Path]) -> None:
    bridge = load_model(random_dirs["gpt2"])
    delattr(bridge, models.MODEL_ID_ATTR)
    assert model_id(bridge) == bridge.cfg.model_name


def test_local_dir_without_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UnlockLensError, match="config.json"):
        load_model(tmp_path)


def test_missing_gguf_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UnlockLensError, match="does not exist"):
        load_model(tmp_path / "nope.gguf")


# ---------------------------------------------------------------------------- offline errors


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, empty cache, no env dirs, and no GGUF package importable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLOCK_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for entry in MODEL_REGISTRY.values():
        monkeypatch.delenv(entry.env_var, raising=False)
    monkeypatch.setattr(models, "_module_dir", lambda module: None)
    monkeypatch.setattr(models, "_hub_cached", lambda repo_id: False)


def test_offline_unknown_hub_id_fails_fast(nothing_installed: None) -> None:
    start = time.perf_counter()
    with pytest.raises(UnlockLensError, match="not available offline") as info:
        load_model("someone/definitely-not-a-model-xyz")
    assert time.perf_counter() - start < 5
    assert "HF_HUB_OFFLINE" in str(info.value)


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_registry_without_packages_names_install_command(
    nothing_installed: None, name: str
) -> None:
    entry = MODEL_REGISTRY[name]
    for call in (lambda: load_model(name), lambda: resolve_model_dir(name)):
        with pytest.raises(UnlockLensError) as info:
            call()
        msg = str(info.value)
        assert entry.pip_command in msg
        assert "install_offline_models.sh" in msg
        assert entry.env_var in msg


def test_registry_env_dir_wins(
    nothing_installed: None, monkeypatch: pytest.MonkeyPatch, random_dirs: dict[str, Path]
) -> None:
    monkeypatch.setenv("UNLOCK_LENS_SMOLLM2_DIR", str(random_dirs["llama"]))
    assert resolve_model_dir("smollm2-135m-instruct") == random_dirs["llama"]
    bridge = load_model("smollm2-135m-instruct")
    assert model_id(bridge) == "smollm2-135m-instruct"


def test_registry_env_dir_must_be_model(nothing_installed: None, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("UNLOCK_LENS_GEMMA3_DIR", str(tmp_path))
    with pytest.raises(UnlockLensError, match="UNLOCK_LENS_GEMMA3_DIR"):
        load_model("gemma-3-270m")


def test_unknown_name_errors(nothing_installed: None) -> None:
    with pytest.raises(UnlockLensError, match="registry"):
        resolve_model_dir("not-a-registry-name")
    with pytest.raises(UnlockLensError, match="registry name"):
        load_model("./missing/dir")


def test_atomic_build_leaves_no_partial_cache(tmp_path: Path) -> None:
    target = tmp_path / "models" / "thing"

    def crash(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        models._atomic_build(target, crash)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []

    def ok(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        (tmp / models.SOURCE_RECORD).write_text("{}")

    assert models._atomic_build(target, ok) == target
    assert (target / "config.json").is_file()
    assert models._atomic_build(target, crash) == target  # cached: build not called again


# ---------------------------------------------------------------------------- real models


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shape"), [("smollm2-135m-instruct", (30, 576)), ("gemma-3-270m", (18, 640))]
)
def test_real_registry_models(name: str, shape: tuple[int, int]) -> None:
    if models._registry_gguf_parts(MODEL_REGISTRY[name]) is None:
        pytest.skip(f"run scripts/install_offline_models.sh to install {name}")
    bridge = load_model(name)
    assert model_shape(bridge) == shape
    assert model_id(bridge) == name
    assert f"blocks.{shape[0] - 1}.hook_resid_post" in bridge.hook_dict
    tok = bridge.tokenizer

    def ranked(prompt: str) -> list[str]:
        with torch.no_grad():
            logits = bridge(bridge.to_tokens(prompt), return_type="logits")
        return [tok.decode(i) for i in logits[0, -1].topk(3).indices]

    top = ranked("The capital of France is")
    if name == "gemma-3-270m":
        # The Q4_K_M base model ranks ' the' (19.1) and ' a' (18.6) just above ' Paris' (18.3)
        # here; it is greedy-correct one step later.
        assert " Paris" in top
        assert ranked("The capital of France is the city of")[0] == " Paris"
    else:
        assert top[0] == " Paris"
