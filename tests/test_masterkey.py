import pytest
import torch
from sklearn.decomposition import PCA

from unlock_lens.activations import Variant, capture
from unlock_lens.errors import ArtifactError, ModelMismatchError, UnlockLensError
from unlock_lens.masterkey import (
    MasterKey,
    aggregate_differences,
    extract_masterkey,
    spectral_entropy_rank,
)


def test_mean_key_is_mean_of_captured_differences(qwen, questions):
    key = extract_masterkey(Variant(qwen, "direct"), Variant(qwen, "cot"), questions)
    h_l = capture(qwen, Variant(qwen, "direct").prompts(questions))
    h_u = capture(qwen, Variant(qwen, "cot").prompts(questions))
    torch.testing.assert_close(key.directions, (h_u - h_l).mean(0))
    assert key.contrast == "prompt" and key.n_prompts == len(questions)
    assert key.layers == [0, 1, 2] and key.source.d_model == qwen.cfg.d_model
    assert len(key.effective_rank) == 3 and all(r >= 1.0 for r in key.effective_rank)


def test_pca_aggregator_matches_sklearn_and_agrees_in_sign():
    gen = torch.Generator().manual_seed(1)
    mean_dir = torch.randn(12, generator=gen)
    diffs = mean_dir + 0.5 * torch.randn(200, 2, 12, generator=gen)
    diffs[:, 1] += 3.0 * torch.randn(200, 1, generator=gen) * torch.randn(12, generator=gen)
    pca = aggregate_differences(diffs, "pca")
    for layer in range(2):
        ref = torch.tensor(PCA(1).fit(diffs[:, layer].numpy()).components_[0], dtype=torch.float32)
        assert abs(float(pca[layer] @ ref)) == pytest.approx(1.0, abs=1e-4)
        assert float(pca[layer] @ diffs[:, layer].mean(0)) > 0  # sign follows the mean


def test_effective_rank_of_planted_rank():
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(32, 3, generator=gen))[0].T  # 3 orthonormal rows
    diffs = torch.randn(500, 3, generator=gen) @ basis
    assert spectral_entropy_rank(diffs) == pytest.approx(3.0, abs=0.2)
    assert spectral_entropy_rank(torch.randn(500, 1, generator=gen) @ basis[:1]) == pytest.approx(1.0, abs=1e-3)


def test_model_driven_key(tiny_dirs, questions):
    from unlock_lens.models import load_model
    from unlock_lens.random_models import build_random_model

    base = load_model(str(tiny_dirs["qwen2"]))
    post_dir = build_random_model(tiny_dirs["qwen2"].parent / "qwen2-post", "qwen2", seed=99)
    post = load_model(str(post_dir))
    key = extract_masterkey(Variant(base, "cot"), Variant(post, "cot"), questions[:4])
    assert key.contrast == "model" and key.source_unlocked_id == str(post_dir.resolve())
    with pytest.raises(UnlockLensError, match="differ in shape"):
        extract_masterkey(Variant(base, "cot"), Variant(load_model(str(tiny_dirs["qwen2-deep"])), "cot"), questions)


def test_save_load_bit_exact_and_integrity(qwen, questions, tmp_path, tiny_models):
    key = extract_masterkey(Variant(qwen, "direct"), Variant(qwen, "cot"), questions, aggregator="pca")
    path = key.save(tmp_path / "key.safetensors")
    back = MasterKey.load(path)
    assert torch.equal(back.directions, key.directions)
    assert back.to_parts()[1] == key.to_parts()[1]
    back.check_model(qwen)
    with pytest.raises(ModelMismatchError, match="hidden size"):
        back.check_model(tiny_models["qwen2-deep"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="hash"):
        MasterKey.load(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ArtifactError):
        MasterKey.load(tmp_path / "short.safetensors")


def test_bad_input(qwen, questions):
    with pytest.raises(UnlockLensError, match="empty"):
        extract_masterkey(Variant(qwen, "direct"), Variant(qwen, "cot"), [])
    with pytest.raises(UnlockLensError, match="identical"):
        extract_masterkey(Variant(qwen, "cot"), Variant(qwen, "cot"), questions)
    with pytest.raises(UnlockLensError, match="aggregator"):
        extract_masterkey(Variant(qwen, "direct"), Variant(qwen, "cot"), questions, aggregator="median")
    with pytest.raises(UnlockLensError, match="NaN"):
        aggregate_differences(torch.tensor([[[float("nan"), 1.0]]]))
    with pytest.raises(UnlockLensError, match="at least 2"):
        aggregate_differences(torch.ones(1, 1, 4), "pca")
    with pytest.raises(UnlockLensError, match="unknown prompt format"):
        Variant(qwen, "socratic")
