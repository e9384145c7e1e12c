import dataclasses

import pytest
import torch

from unlock_lens.activations import final_logits
from unlock_lens.align.layers import AlignSpec, depth_match
from unlock_lens.errors import ArtifactError, ModelMismatchError, UnlockLensError
from unlock_lens.pack import CapabilityPack
from unlock_lens.unlock import Unlock

KEY_Q = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "There are 12 birds on a tree and 4 fly away. How many are left?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
]
ALIGN_Q = [f"Sara reads {a} pages a day for {b} days. How many pages does she read?" for a, b in
           [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6), (4, 11), (15, 2), (6, 8), (30, 3), (2, 9), (8, 8)]]


@pytest.fixture(scope="module")
def cross_pack(tiny_models):
    src, tgt = tiny_models["qwen2"], tiny_models["qwen2-deep"]
    pipe = Unlock(source=src, target=tgt, rank=4, alpha=0.5)
    return pipe, pipe.run(KEY_Q, ALIGN_Q)


def test_pipeline_maps_every_target_layer_by_relative_depth(cross_pack, tiny_models):
    pipe, pack = cross_pack
    tgt = tiny_models["qwen2-deep"]
    assert sorted(pack.maps) == list(range(tgt.cfg.n_layers))
    assert [pack.maps[t].source_layer for t in range(5)] == depth_match(3, 5) == [0, 0, 1, 1, 2]
    dirs = pack.target_directions()
    assert all(v.shape == (tgt.cfg.d_model,) and torch.isfinite(v).all() for v in dirs.values())
    # r^(t) is m^(s(t)) W_t
    t = 3
    expected = pack.key.direction(pack.maps[t].source_layer) @ pack.maps[t].weight
    torch.testing.assert_close(dirs[t], expected, atol=1e-5, rtol=1e-5)
    assert pack.alignment["method"] == "svd" and pack.alignment["rank"] == 4
    assert pack.alignment["n_prompts"] == len(ALIGN_Q)


def test_steered_target_differs_and_hooks_are_gone(cross_pack, tiny_models):
    pipe, pack = cross_pack
    tgt = tiny_models["qwen2-deep"]
    prompts = pipe.target_variant.prompts(KEY_Q)
    plain = final_logits(tgt, prompts)
    with pack.applied(tgt):
        steered = final_logits(tgt, prompts)
    assert (steered - plain).abs().max() > 1e-3
    assert torch.equal(final_logits(tgt, prompts), plain)
    outs = pipe.generate(KEY_Q[:2], pack, max_new_tokens=6)
    assert len(outs) == 2 and all(o.n_tokens <= 6 for o in outs)


def test_pack_round_trip_and_refusals(cross_pack, tiny_models, tmp_path):
    _, pack = cross_pack
    path = pack.save(tmp_path / "pack.safetensors")
    back = CapabilityPack.load(path)
    a, b = pack.target_directions(), back.target_directions()
    assert a.keys() == b.keys() and all(torch.equal(a[t], b[t]) for t in a)
    assert back.alpha == pack.alpha and back.alignment == pack.alignment
    assert back.edit_dtype == pack.edit_dtype == "float32"
    model_dtype = CapabilityPack.load(dataclasses.replace(pack, edit_dtype="model").save(tmp_path / "bf16.safetensors"))
    assert model_dtype.edit_dtype == model_dtype.steering().edit_dtype == "model"
    back.check_model(tiny_models["qwen2-deep"])
    with pytest.raises(ModelMismatchError, match=r"hidden size 64 != 96.*layer count 3 != 5"):
        back.check_model(tiny_models["qwen2"])
    with pytest.raises(ArtifactError, match="holds a CapabilityPack, not a MasterKey"):
        from unlock_lens.masterkey import MasterKey

        MasterKey.load(path)


def test_same_model_identity_map_returns_the_key(tiny_models):
    model = tiny_models["qwen2"]
    pipe = Unlock(source=model, target=model, method="identity", rank=1)
    pack = pipe.run(KEY_Q, ALIGN_Q)
    dirs = pack.target_directions()
    for t in range(3):
        torch.testing.assert_close(dirs[t], pack.key.directions[t])
    # svd at full rank on the same model projects the key onto the prompts' row space
    svd = pipe.align(pack.key, ALIGN_Q, AlignSpec("svd", 12))
    H = torch.stack([m.source_basis for m in svd.maps.values()])
    for t, v in svd.target_directions().items():
        V = svd.maps[t].source_basis
        torch.testing.assert_close(v, pack.key.directions[t] @ V @ V.T, atol=1e-4, rtol=1e-4)
    assert H.shape[-1] == 12


def test_bad_pipeline_input(tiny_models):
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["qwen2-deep"], rank=4)
    with pytest.raises(UnlockLensError, match="both the key and the alignment"):
        pipe.run(KEY_Q, KEY_Q[:2] + ALIGN_Q)
    key = pipe.extract(KEY_Q)
    with pytest.raises(UnlockLensError, match="rank"):
        pipe.align(key, ALIGN_Q[:3], AlignSpec(rank=8))
    with pytest.raises(UnlockLensError, match="unknown"):
        pipe.align(key, ALIGN_Q, AlignSpec("telepathy"))
    with pytest.raises(ModelMismatchError):
        Unlock(source=tiny_models["qwen2-deep"], target=tiny_models["qwen2"]).align(key, ALIGN_Q)
