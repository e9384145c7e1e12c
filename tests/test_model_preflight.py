"""What the command line asks of a model name before it loads anything: a reachable hub (a real
socket), offline mode, folders and files that are models, and where a GGUF will be converted."""

from __future__ import annotations

import socket

import pytest

from unlock_lens import cli, models
from unlock_lens.errors import UnlockLensError
from unlock_lens.models import MODEL_REGISTRY, check_model_source, conversion_target, hub_reachable


def test_hub_reachable_opens_a_real_connection(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused at once
    assert not hub_reachable(timeout=2)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")  # the proxy is what is tried
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    assert not hub_reachable(timeout=2)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_hub_only_name_fails_at_once_offline(var, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: pytest.fail("hub contacted"))
    with pytest.raises(UnlockLensError, match="offline mode is set"):
        check_model_source("someone/no-such-model")


def test_a_hub_only_name_fails_at_once_when_the_hub_is_unreachable(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UnlockLensError, match="cannot be reached"):
        check_model_source("someone/no-such-model")


def test_local_models_pass_and_non_models_fail(tiny_dirs, tmp_path):
    check_model_source(tiny_dirs["llama"])  # a model folder: nothing to fetch
    with pytest.raises(UnlockLensError, match="no config.json"):
        check_model_source(tmp_path)
    with pytest.raises(UnlockLensError, match="does not exist"):
        check_model_source(tmp_path / "none.gguf")
    with pytest.raises(UnlockLensError, match="not a local model folder"):
        check_model_source("./not/a model")
    assert conversion_target(tiny_dirs["llama"]) is None


def test_the_cli_says_where_it_converts_a_registry_model(monkeypatch, tmp_path, capsys):
    name = "smollm2-135m-instruct"
    if models._registry_gguf_parts(MODEL_REGISTRY[name]) is None:
        pytest.skip("the GGUF packages are not installed (scripts/install_offline_models.sh)")
    monkeypatch.delenv(MODEL_REGISTRY[name].env_var, raising=False)
    monkeypatch.setenv("UNLOCK_LENS_CACHE", str(tmp_path))
    assert conversion_target(name) == tmp_path / "models" / name
    monkeypatch.setattr(models, "load_model", lambda name, device: "loaded")
    assert cli._load(name, "cpu") == "loaded"
    assert f"converting {name} (GGUF) into the cache, once: {tmp_path / 'models' / name}" in capsys.readouterr().err
    monkeypatch.setenv(MODEL_REGISTRY[name].env_var, str(tmp_path))  # a local copy: no conversion
    assert conversion_target(name) is None
