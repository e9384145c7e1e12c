"""Exports of a CapabilityPack: llama.cpp GGUF, TransformerLens vLLM specs, plain safetensors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers

from unlock_lens.activations import capture, encode, final_logits
from unlock_lens.errors import ArtifactError, UnlockLensError
from unlock_lens.export import (
    additive_directions,
    export_control_vector_gguf,
    export_directions_safetensors,
    export_pack,
    export_vllm_specs,
    llama_cpp_index,
    load_exported_directions,
    measure_resid_norms,
    provenance,
    read_control_vector_gguf,
    vllm_intervention_specs,
)
from unlock_lens.steer import edit_residual
from unlock_lens.unlock import Unlock

KEY_Q = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "There are 12 birds on a tree and 4 fly away. How many are left?",
    "Each box holds 7 pens. How many pens are in 3 boxes?",
]
ALIGN_Q = [f"Sara reads {a} pages a day for {b} days. How many pages?" for a, b in
           [(3, 4), (10, 2), (7, 7), (12, 5), (9, 3), (20, 6), (4, 11), (15, 2)]]
PROVENANCE_KEYS = {
    "source", "target", "source_hooks", "target_hooks", "layer_map", "rank", "method", "alpha",
    "normalisation", "positions", "weight_mode", "prompt_hash", "library_version",
}


@pytest.fixture(scope="module")
def pipe_and_pack(tiny_models):
    """qwen2 (3 x d64) -> llama (3 x d64), unit steering at every position: exactly additive."""
    pipe = Unlock(source=tiny_models["qwen2"], target=tiny_models["llama"], rank=4, alpha=1.5,
                  normalisation="unit", positions="all")
    return pipe, pipe.run(KEY_Q, ALIGN_Q)


@pytest.fixture()
def pack(pipe_and_pack):
    return pipe_and_pack[1]


def _check_provenance(meta, pack):
    assert set(meta) >= PROVENANCE_KEYS
    assert meta["source"]["model_id"] == pack.key.source.model_id
    assert meta["target"]["model_id"] == pack.target.model_id
    assert meta["layer_map"] == {str(t): m.source_layer for t, m in pack.maps.items()}
    assert meta["target_hooks"]["2"] == "blocks.2.hook_resid_post"
    assert meta["rank"] == 4 and meta["method"] == "svd"
    assert meta["prompt_hash"]["key"] == pack.key.prompt_hash
    assert meta["prompt_hash"]["alignment"] == pack.alignment["prompt_hash"]
    assert meta["weight_mode"] == {"source": "raw", "target": "raw"}


def _hf_adder(v):
    """A forward hook adding ``v`` to an HF decoder layer's output at every position."""

    def hook(module, args, out):
        return (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v

    return hook


def _tl_adder(v):
    return lambda x, hook: x + v


def test_additive_vectors_follow_the_normalisation(pack):
    dirs = pack.target_directions()
    unit = additive_directions(pack, alpha=2.0)
    for t, r in dirs.items():
        torch.testing.assert_close(unit[t], 2.0 * r / r.norm())
    raw = additive_directions(dataclasses.replace(pack, normalisation="raw"), alpha=2.0)
    torch.testing.assert_close(raw[1], 2.0 * dirs[1])
    rot = dataclasses.replace(pack, normalisation="rotate")
    with pytest.raises(UnlockLensError, match="pass norms="):
        additive_directions(rot)
    scaled = additive_directions(rot, alpha=0.1, norms={0: 10.0, 1: 20.0, 2: 30.0})
    torch.testing.assert_close(scaled[2], 0.1 * 30.0 * dirs[2] / dirs[2].norm())
    # first-order agreement with the rotate edit on a state of that norm orthogonal to r
    r_hat = dirs[2] / dirs[2].norm()
    h = torch.randn(64, generator=torch.Generator().manual_seed(0))
    h = h - (h @ r_hat) * r_hat
    h = 30.0 * h / h.norm()
    step = edit_residual(h, dirs[2], 0.1, "rotate") - h
    assert float(torch.cosine_similarity(step, scaled[2], dim=0)) > 0.99


def test_gguf_round_trip_layer_numbering_and_hf_equivalence(pack, pipe_and_pack, tiny_dirs, tmp_path):
    pipe, _ = pipe_and_pack
    path = tmp_path / "cv.gguf"
    with pytest.warns(UserWarning, match=r"target layers \[0\] are left out"):
        export_control_vector_gguf(pack, path, model_hint="llama")
    vectors, meta = read_control_vector_gguf(path)
    assert sorted(vectors) == [1, 2]  # direction.N = output of 0-based block N; block 0 unreachable
    expected = additive_directions(pack)
    for n, v in vectors.items():
        np.testing.assert_array_equal(v, expected[n].numpy())
    assert meta["model_hint"] == "llama" and meta["layer_count"] == 2
    prov = meta["provenance"]
    _check_provenance(prov, pack)
    assert prov["dropped_layers"] == [0] and prov["llama_cpp_layers"] == {"0": None, "1": 1, "2": 2}
    assert prov["applied_positions"] == "all"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file

    # What llama.cpp does (add direction.N after HF decoder layer N, every position) equals our
    # steering at those layers: an off-by-one in the numbering would break this.
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    hf.eval()
    handles = [hf.model.layers[n].register_forward_hook(_hf_adder(torch.from_numpy(v)))
               for n, v in vectors.items()]
    prompt = pipe.target_variant.prompts(KEY_Q[:1])
    ids, _ = encode(pipe.target, prompt)
    try:
        with torch.no_grad():
            llama_cpp_like = hf(ids).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    ours = final_logits(pipe.target, prompt, steering=pack.steering(layers=[1, 2]))[0]
    torch.testing.assert_close(ours, llama_cpp_like, atol=1e-4, rtol=1e-4)
    plain = final_logits(pipe.target, prompt)[0]
    assert (ours - plain).abs().max() > 1e-3

    with pytest.raises(UnlockLensError, match="strict=True"):
        export_control_vector_gguf(pack, tmp_path / "strict.gguf", strict=True)
    assert not (tmp_path / "strict.gguf").exists()


def test_gguf_index_for_resid_pre_and_reader_refusals(pack, tmp_path):
    assert [llama_cpp_index(t) for t in range(3)] == [None, 1, 2]
    assert [llama_cpp_index(t, "resid_pre") for t in range(3)] == [None, None, 1]
    import gguf

    bad = tmp_path / "zero.gguf"
    w = gguf.GGUFWriter(str(bad), arch="controlvector")
    w.add_tensor("direction.0", np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ArtifactError, match="not a valid direction.N"):
        read_control_vector_gguf(bad)


def test_vllm_specs_are_valid_and_equal_steering(pack, pipe_and_pack, tmp_path):
    from transformer_lens.model_bridge.sources.vllm.intervention_specs import validate_spec

    pipe, _ = pipe_and_pack
    target = pipe.target
    specs = vllm_intervention_specs(pack)
    assert sorted(specs) == [f"blocks.{t}.hook_out" for t in range(3)]
    for name, spec in specs.items():
        validate_spec(name, spec, width=target.cfg.d_model)
        assert "pos" not in spec  # positions="all": whole-sequence edit
    # vLLM's worker applies x * 1 + value at the hook; do the same on the bridge's hook_out
    prompt = pipe.target_variant.prompts(KEY_Q[1:2])
    hooks = [(name, _tl_adder(torch.tensor(s["value"]))) for name, s in specs.items()]
    ids, mask = encode(target, prompt)
    with torch.no_grad(), target.hooks(fwd_hooks=hooks):
        by_spec = target(ids, return_type="logits")[0, -1]
    ours = final_logits(target, prompt, steering=pack.steering())[0]
    torch.testing.assert_close(by_spec, ours, atol=1e-4, rtol=1e-4)

    path = export_vllm_specs(pack, tmp_path / "specs.json")
    doc = json.loads(path.read_text())
    assert doc["intervene"] == specs and doc["boot_vllm_kwargs"] == {"enable_position_interventions": False}
    _check_provenance(doc["provenance"], pack)


def test_vllm_specs_refuse_what_they_cannot_express(pack):
    with pytest.raises(UnlockLensError, match="cannot be expressed exactly"):
        vllm_intervention_specs(dataclasses.replace(pack, normalisation="rotate"))
    with pytest.raises(UnlockLensError, match="cannot be expressed exactly"):
        vllm_intervention_specs(dataclasses.replace(pack, normalisation="resid"))
    last = dataclasses.replace(pack, positions="last_prompt")
    with pytest.raises(UnlockLensError, match="pass prompt_length"):
        vllm_intervention_specs(last)
    assert {s["pos"] for s in vllm_intervention_specs(last, prompt_length=7).values()} == {6}
    with pytest.raises(UnlockLensError, match="decode steps only"):
        vllm_intervention_specs(dataclasses.replace(pack, positions="final"))
    assert vllm_intervention_specs(pack, alpha=0.0) == {}


def test_safetensors_round_trip_and_plain_readability(pack, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = export_directions_safetensors(pack, tmp_path / "dirs.safetensors", alpha=0.7)
    directions, additive, meta = load_exported_directions(path)
    dirs = pack.target_directions()
    assert directions.keys() == dirs.keys() == additive.keys()
    for t in dirs:
        assert torch.equal(directions[t], dirs[t])
        torch.testing.assert_close(additive[t], 0.7 * dirs[t] / dirs[t].norm())
    _check_provenance(meta, pack)
    assert meta["alpha"] == 0.7 and meta["kind"] == "SteeringDirections"
    # any safetensors reader (steering-vectors / repeng users) gets plain tensors + JSON
    plain = load_file(str(path))
    assert torch.equal(plain["direction.1"], dirs[1])
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["unlock_lens"])["layer_map"] == meta["layer_map"]
    # a rotate pack without norms stores the exact directions only
    rot = dataclasses.replace(pack, normalisation="rotate")
    _, additive_rot, _ = load_exported_directions(
        export_directions_safetensors(rot, tmp_path / "rot.safetensors"))
    assert additive_rot == {}


def test_export_pack_measures_norms_for_rotate(pack, pipe_and_pack, tmp_path):
    pipe, _ = pipe_and_pack
    rot = dataclasses.replace(pack, normalisation="rotate", positions="last_prompt", alpha=0.1)
    pack_path = rot.save(tmp_path / "rot.pack.safetensors")
    with pytest.raises(UnlockLensError, match="pass norms="):
        export_pack(pack_path, "gguf", tmp_path / "x.gguf")
    with pytest.warns(UserWarning, match="left out"):
        out = export_pack(pack_path, "gguf", tmp_path / "rot.gguf", model=pipe.target, prompts=ALIGN_Q[:4])
    vectors, meta = read_control_vector_gguf(out)
    norms = measure_resid_norms(pipe.target, pipe.target_variant.prompts(ALIGN_Q[:4]), [0, 1, 2])
    H = capture(pipe.target, pipe.target_variant.prompts(ALIGN_Q[:4]), [2])
    assert norms[2] == pytest.approx(float(H[:, 0].norm(dim=-1).mean()), rel=1e-6)
    r = rot.target_directions()[2]
    np.testing.assert_allclose(vectors[2], (0.1 * norms[2] * r / r.norm()).numpy(), rtol=1e-5)
    prov = meta["provenance"]
    assert prov["positions"] == "last_prompt" and prov["applied_positions"] == "all"
    assert prov["additive_approximation"] is True
    assert prov["norms"]["2"] == pytest.approx(norms[2])
    with pytest.raises(UnlockLensError, match="cannot be expressed exactly"):
        export_pack(pack_path, "vllm", tmp_path / "x.json")
    with pytest.raises(UnlockLensError, match="unknown export format"):
        export_pack(pack_path, "onnx", tmp_path / "x.onnx")  # type: ignore[arg-type]
    assert provenance(rot)["normalisation"] == "rotate"


def test_safetensors_recipe_for_steering_vectors_matches_our_steering(pack, pipe_and_pack, tiny_dirs, tmp_path):
    """The documented steering-vectors recipe reproduces the pack's (unit, all-positions) steering."""
    sv_lib = pytest.importorskip("steering_vectors")
    from safetensors.torch import load_file

    pipe, _ = pipe_and_pack
    path = export_directions_safetensors(pack, tmp_path / "sv.safetensors")
    tensors = load_file(str(path))
    layers = load_exported_directions(path)[2]["additive_layers"]
    sv = sv_lib.SteeringVector({t: tensors[f"additive.{t}"] for t in layers}, layer_type="decoder_block")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    prompt = pipe.target_variant.prompts(KEY_Q[2:3])
    ids, _ = encode(pipe.target, prompt)
    with torch.no_grad(), sv.apply(hf, multiplier=1.0):
        theirs = hf(ids).logits[0, -1]
    ours = final_logits(pipe.target, prompt, steering=pack.steering())[0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
